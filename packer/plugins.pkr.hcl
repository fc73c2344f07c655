# Left out of the build dir by builder when Packer is older than 1.7: those Packers bundle the vSphere
# builders and reject this block.
packer {
  required_version = ">= 1.6.6"
  required_plugins {
    vsphere = {
      source  = "github.com/hashicorp/vsphere"
      version = ">= 1.2.0"
    }
  }
}
