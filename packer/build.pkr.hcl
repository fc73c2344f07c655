# One build. Provisioners run in this order: guest files, scripts 05..40, the testinfra image suite from
# the build machine, then the seal script last. The *_offline sources (communicator "none") skip all
# of them: nothing can be copied into a guest Packer cannot reach.

locals {
  offline  = ["vsphere-iso.iso_offline", "vsphere-clone.clone_offline"]
  scripts  = "${path.root}/../scripts"
  rootfs   = "${path.root}/../rootfs"
  guestdir = "/tmp/arcbake"
}

build {
  sources = ["source.vsphere-iso.iso", "source.vsphere-clone.clone"]

  source "source.vsphere-iso.iso" {
    name         = "iso_offline"
    communicator = "none"
  }

  source "source.vsphere-clone.clone" {
    name         = "clone_offline"
    communicator = "none"
  }

  provisioner "shell" {
    except = local.offline
    inline = ["mkdir -p ${local.guestdir}/rootfs /tmp/arcbake-wheelhouse"]
  }

  provisioner "file" {
    except      = local.offline
    source      = "${local.rootfs}/"
    destination = "${local.guestdir}/rootfs"
  }

  provisioner "file" {
    except      = local.offline
    source      = "${path.root}/../wheelhouse/"
    destination = "/tmp/arcbake-wheelhouse"
  }

  # Guest files land at their absolute paths, owned by root, before any script runs.
  provisioner "shell" {
    except          = local.offline
    execute_command = "sudo -E sh -eu '{{ .Path }}'"
    inline = [
      # Mode and times only: root owns the result, and SELinux labels come from the target (no /tmp labels).
      "cp -R --preserve=mode,timestamps ${local.guestdir}/rootfs/. /",
      "chmod 0600 /etc/rancher/k3s/config.yaml",
      "rm -rf ${local.guestdir}/rootfs",
    ]
  }

  # RHSM credentials travel as environment through a file Packer deletes, never as a command line.
  # The env var file is sourced by root's shell, so the values never appear on a command line.
  provisioner "shell" {
    except           = local.offline
    execute_command  = "sudo bash -c '. {{ .EnvVarFile }} && exec bash {{ .Path }}'"
    use_env_var_file = true
    environment_vars = concat(var.build_env, ["RHSM_ORG=${var.rhsm_org}", "RHSM_ACTIVATION_KEY=${var.rhsm_activation_key}"])
    scripts          = [for s in sort(fileset(local.scripts, "[0-8][0-9]-*.sh")) : "${local.scripts}/${s}"]
  }

  # The testinfra suite a template must pass, run from the build machine before sealing, with the Python
  # of var.image_tests_python (builder build sets PKR_VAR_image_tests_python to its own venv). Its JUnit
  # (one case per check) lands in the build dir, where `builder build --junit` merges it.
  provisioner "shell-local" {
    except = local.offline
    environment_vars = [
      "ARCBAKE_IMAGE_HOST=${build.Host}",
      "ARCBAKE_IMAGE_USER=${build.User}",
      "ARCBAKE_IMAGE_EXPECT=${path.root}/../image-expect.json",
      "ARCBAKE_RUN_IMAGE_TESTS=${var.run_image_tests}",
      "ARCBAKE_SSH_KEY=${var.ssh_private_key_file}",
    ]
    inline = [
      "if [ \"$ARCBAKE_RUN_IMAGE_TESTS\" != true ]; then echo 'image tests disabled by the spec'; exit 0; fi",
      "${var.image_tests_python} -m pytest -p no:cacheprovider -q -m 'not sealed' '${path.root}/../tests/image' --junitxml='${path.root}/../image-suite.junit.xml' --hosts=\"ssh://$ARCBAKE_IMAGE_USER@$ARCBAKE_IMAGE_HOST\" --ssh-identity-file=\"$ARCBAKE_SSH_KEY\" --ssh-extra-args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null' --sudo",
    ]
  }

  provisioner "shell" {
    except          = local.offline
    execute_command = "sudo -E bash '{{ .Path }}'"
    scripts         = [for s in sort(fileset(local.scripts, "9[0-9]-*.sh")) : "${local.scripts}/${s}"]
  }

  post-processor "manifest" {
    output     = "${path.root}/../packer-manifest.json"
    strip_path = true
    custom_data = {
      vm_name = var.vm_name
    }
  }
}
