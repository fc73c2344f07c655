"""What a clone needs to run K3s and the Arc agents: the one source for firstboot's resources step and for
the image spec's hardware limits (builder refuses a template that no clone of it could pass with).

Free disk is measured under `/var/lib/rancher`, on the root file system of the kickstart's layout (EFI +
/boot partitions, the rest one LVM root volume). What the bake itself occupies there (the OS, K3s with its
air-gap images, the Azure CLI with its extensions, firstboot and its wheels) is IMAGE_FOOTPRINT_GIB, a
deliberately generous figure (a baked Rocky 9 image uses about 6 GiB of its root volume and 1.6 GiB of
partitions), so `hardware.disk_gib` must be at least MIN_DISK_GIB for a clone to pass the check.
"""

from __future__ import annotations

GIB = 1024**3
MIN_CPUS, RECOMMENDED_CPUS = 2, 4
MIN_MEMORY_MIB, RECOMMENDED_MEMORY_MIB = 4096, 8192
# Free space K3s and the Arc agents need under /var/lib/rancher (images, containerd, logs).
MIN_FREE_DISK_GIB = 20
IMAGE_FOOTPRINT_GIB = 8
MIN_DISK_GIB = MIN_FREE_DISK_GIB + IMAGE_FOOTPRINT_GIB
# The image spec's default: the minimum with room for images and logs to grow.
DEFAULT_DISK_GIB = 32
