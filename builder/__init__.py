"""arcbake builder: image spec, rendering, validation, Packer and vSphere operations (image CI side)."""
