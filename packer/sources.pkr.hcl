# Two builders, each in two flavours: "iso"/"clone" connect over SSH and run the provisioners;
# "iso_offline"/"clone_offline" use communicator "none" (vCenter simulator, tests) and skip every
# provisioner that needs a connection (see `except` in build.pkr.hcl). `builder build` picks one with -only.

source "vsphere-iso" "iso" {
  vcenter_server      = var.vsphere_server
  username            = var.vsphere_user
  password            = var.vsphere_password
  insecure_connection = var.vsphere_insecure

  datacenter    = var.datacenter
  cluster       = var.cluster
  host          = var.host
  resource_pool = var.resource_pool
  datastore     = var.datastore
  folder        = var.folder
  vm_name       = var.vm_name
  notes         = var.notes

  guest_os_type        = var.guest_os_type
  firmware             = var.firmware
  CPUs                 = var.cpus
  RAM                  = var.memory_mib
  disk_controller_type = ["pvscsi"]
  storage {
    disk_size             = var.disk_mib
    disk_thin_provisioned = true
  }
  network_adapters {
    network      = var.network
    network_card = "vmxnet3"
  }
  configuration_parameters = var.configuration_parameters

  iso_url      = var.iso_url
  iso_checksum = var.iso_checksum
  iso_paths    = var.iso_paths

  # The kickstart is served by Packer's HTTP server (http_directory: Packer 1.6 has no http_content).
  http_directory = "${path.root}/../http"
  boot_wait      = var.boot_wait
  boot_command   = var.boot_command

  ssh_username         = var.ssh_username
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "45m"
  # No shutdown_command: the seal has removed the build user's sudo rights, so Packer shuts the guest down
  # through VMware Tools (an empty shutdown_command calls vm.StartShutdown(): builder/vsphere/common/
  # step_shutdown.go of the vsphere builders).
  shutdown_timeout = "15m"

  convert_to_template = var.convert_to_template
  dynamic "content_library_destination" {
    for_each = var.content_library == "" ? [] : [var.content_library]
    content {
      library = content_library_destination.value
      name    = var.content_library_item
      ovf     = var.content_library_ovf
    }
  }
}

source "vsphere-clone" "clone" {
  vcenter_server      = var.vsphere_server
  username            = var.vsphere_user
  password            = var.vsphere_password
  insecure_connection = var.vsphere_insecure

  datacenter    = var.datacenter
  cluster       = var.cluster
  host          = var.host
  resource_pool = var.resource_pool
  datastore     = var.datastore
  folder        = var.folder
  vm_name       = var.vm_name
  notes         = var.notes
  template      = var.clone_template
  linked_clone  = false

  CPUs                     = var.cpus
  RAM                      = var.memory_mib
  disk_size                = var.disk_mib
  network                  = var.network
  configuration_parameters = var.configuration_parameters

  ssh_username         = var.ssh_username
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "20m"
  # No shutdown_command: the seal has removed the build user's sudo rights, so Packer shuts the guest down
  # through VMware Tools (an empty shutdown_command calls vm.StartShutdown(): builder/vsphere/common/
  # step_shutdown.go of the vsphere builders).
  shutdown_timeout = "15m"

  convert_to_template = var.convert_to_template
  dynamic "content_library_destination" {
    for_each = var.content_library == "" ? [] : [var.content_library]
    content {
      library = content_library_destination.value
      name    = var.content_library_item
      ovf     = var.content_library_ovf
    }
  }
}
