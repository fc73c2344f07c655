"""guestinfo payloads builder writes into a VM's configuration, encoded the way cloud-init reads them.

- `encode_keys()`: each payload `gzip+base64` with its `.encoding` key (deploy's contract keys, and the
  build access below), decoded by cloud-init's own `DataSourceVMware` in the tests.
- `build_access()`: how a vsphere-clone build over SSH gets its key into the clone. Packer 1.6.6's
  vsphere-clone has no way to pass a key (its `customize` block is VMware guest customization: host
  name, network, time zone; no users or keys), and the source template was sealed without one. So the
  build VM gets cloud-init meta-data and `#cloud-config` user-data through `configuration_parameters`
  (extraConfig, set before the clone first boots): the build user with the public key and the same
  sudoers drop-in the kickstart writes for iso builds (`/etc/sudoers.d/90-arcbake-build`, removed by the
  seal). The source must run cloud-init with the VMware datasource (an arcbake template does).
- `BUILD_ACCESS_KEYS`: what builder blanks in the VM's configuration after Packer, before it becomes the
  template: otherwise every clone made without `builder deploy` (which writes its own) would run the
  build's user-data again after the seal's `cloud-init clean` and authorise the build key.
"""

from __future__ import annotations

import json

import yaml

from firstboot.contract import ENCODING_SUFFIX, KEY_METADATA, KEY_USERDATA
from firstboot.encoding import GZIP_BASE64, encode

BUILD_SUDOERS = "/etc/sudoers.d/90-arcbake-build"
BUILD_ACCESS_KEYS = (
    KEY_METADATA,
    KEY_METADATA + ENCODING_SUFFIX,
    KEY_USERDATA,
    KEY_USERDATA + ENCODING_SUFFIX,
)


def encode_keys(payloads: dict[str, str]) -> dict[str, str]:
    """Each payload `gzip+base64` under its key, plus the key's `.encoding`."""
    out: dict[str, str] = {}
    for key, payload in payloads.items():
        out[key] = encode(payload, GZIP_BASE64)
        out[key + ENCODING_SUFFIX] = GZIP_BASE64
    return out


def build_access(vm_name: str, user: str, public_key: str) -> dict[str, str]:
    """guestinfo for the build VM of a vsphere-clone build: the build user and its key, sudo for the build."""
    metadata = {"instance-id": f"iid-arcbake-build-{vm_name}", "local-hostname": "arcbake-build"}
    cloud_config = {
        "users": [
            {"name": user, "shell": "/bin/bash", "lock_passwd": True, "ssh_authorized_keys": [public_key]}
        ],
        "write_files": [
            {
                "path": BUILD_SUDOERS,
                "owner": "root:root",
                "permissions": "0440",
                "content": f"{user} ALL=(ALL) NOPASSWD: ALL\n",
            }
        ],
        "ssh_pwauth": False,
    }
    # No line folding: the key stays on one line.
    userdata = "#cloud-config\n" + yaml.safe_dump(cloud_config, sort_keys=False, width=1 << 16)
    return encode_keys({KEY_METADATA: json.dumps(metadata, sort_keys=True), KEY_USERDATA: userdata})
