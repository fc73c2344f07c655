# Values come from arcbake.auto.pkrvars.json (written by `builder render`) and, for credentials, from
# PKR_VAR_* environment variables set by `builder build`. Nothing secret is ever written to a file.

# --- vCenter connection (environment only) ---------------------------------------------------------
variable "vsphere_server" {
  type    = string
  default = ""
}

variable "vsphere_user" {
  type      = string
  default   = ""
  sensitive = true
}

variable "vsphere_password" {
  type      = string
  default   = ""
  sensitive = true
}

variable "vsphere_insecure" {
  type    = bool
  default = false
}

# --- RHEL subscription (environment only, empty for Rocky) -------------------------------------------
variable "rhsm_org" {
  type      = string
  default   = ""
  sensitive = true
}

variable "rhsm_activation_key" {
  type      = string
  default   = ""
  sensitive = true
}

# --- SSH key of the build user (path from the environment) ------------------------------------------
variable "ssh_private_key_file" {
  type    = string
  default = ""
}

variable "ssh_username" {
  type    = string
  default = "arcbake"
}

# --- placement -------------------------------------------------------------------------------------
variable "vm_name" {
  type = string
}

variable "datacenter" {
  type = string
}

variable "cluster" {
  type    = string
  default = ""
}

variable "host" {
  type    = string
  default = ""
}

variable "resource_pool" {
  type    = string
  default = ""
}

variable "datastore" {
  type = string
}

variable "network" {
  type = string
}

variable "folder" {
  type    = string
  default = ""
}

# --- hardware --------------------------------------------------------------------------------------
variable "guest_os_type" {
  type    = string
  default = "rhel9_64Guest"
}

variable "firmware" {
  type    = string
  default = "efi"
}

variable "cpus" {
  type    = number
  default = 2
}

variable "memory_mib" {
  type    = number
  default = 4096
}

variable "disk_mib" {
  type    = number
  default = 20480
}

variable "configuration_parameters" {
  type    = map(string)
  default = {}
}

variable "notes" {
  type    = string
  default = ""
}

# --- OS source -------------------------------------------------------------------------------------
variable "iso_url" {
  type    = string
  default = ""
}

variable "iso_checksum" {
  type    = string
  default = "none"
}

variable "iso_paths" {
  type    = list(string)
  default = []
}

variable "boot_command" {
  type    = list(string)
  default = []
}

variable "boot_wait" {
  type    = string
  default = "10s"
}

variable "clone_template" {
  type    = string
  default = ""
}

# --- provisioning ----------------------------------------------------------------------------------
variable "build_env" {
  description = "Non-secret environment for the provisioning scripts (proxy settings)."
  type        = list(string)
  default     = []
}

variable "run_image_tests" {
  type    = bool
  default = true
}

variable "image_tests_python" {
  description = "Python that runs the testinfra suite on the build machine."
  type        = string
  default     = "python3"
}

# --- publish ---------------------------------------------------------------------------------------
variable "convert_to_template" {
  type    = bool
  default = true
}

variable "content_library" {
  type    = string
  default = ""
}

variable "content_library_item" {
  type    = string
  default = ""
}

variable "content_library_ovf" {
  type    = bool
  default = false
}
