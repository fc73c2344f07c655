#!/usr/bin/env bash
# One entry point for developers and CI: `bash tools/dev.sh setup|test|lint|demo|bench|fuzz|faults|sim`.
# Works on a fresh Debian 12 machine as root: it installs every real component the tests use
# (../shared/TEST-COMPONENTS.md), builds the vCenter simulator and the project venv. Idempotent and quick
# when everything is already there.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
venv="$here/.venv"
export PATH="$venv/bin:$here/.bin:$PATH"

apt_packages=(
  make git ca-certificates python3 python3-venv python3-dev gcc
  golang-go golang-github-vmware-govmomi-dev packer cloud-init chrony dnsmasq firewalld
  systemd-container open-vm-tools shellcheck debootstrap faketime iproute2 openssl
  chromium pipx
)

need_root() {
  if [ "$(id -u)" != 0 ]; then echo "dev.sh: $1 needs root (apt-get, systemd-nspawn)" >&2; exit 2; fi
}

setup_apt() {
  local missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  need_root "installing ${missing[*]}"
  # apt must not start chronyd, dnsmasq or firewalld on the host: the tests start their own on loopback.
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi
  apt-get update -q
  # With recommends, exactly as TEST-COMPONENTS.md installed and ran these components.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

setup_venv() {
  local stamp="$venv/.arcbake-deps"
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e ".[dev]"
    echo "$want" >"$stamp"
  fi
}

setup_sim() {
  # GOPATH mode against Debian's govmomi source: no module proxy needed.
  local src="$here/.gopath/src/arcbake-vcsim"
  mkdir -p "$src" .bin
  cp sim/vcsim/*.go "$src/"
  if [ ! -x .bin/vcsim ] || [ -n "$(find sim/vcsim -newer .bin/vcsim -name '*.go')" ]; then
    GO111MODULE=off GOPATH="$here/.gopath:/usr/share/gocode" GOCACHE="$here/.gocache" \
      go build -o .bin/vcsim arcbake-vcsim
  fi
}

setup() {
  setup_apt
  setup_venv
  if [ -d sim/vcsim ] && ls sim/vcsim/*.go >/dev/null 2>&1; then setup_sim; fi
}

lint() {
  ruff check .
  ruff format --check .
  local dirs=()
  for d in builder firstboot tests bench tools; do
    if compgen -G "$d/*.py" >/dev/null || compgen -G "$d/**/*.py" >/dev/null; then dirs+=("$d"); fi
  done
  mypy "${dirs[@]}"
}

cmd=${1:-test}
shift || true
case "$cmd" in
  setup) setup ;;
  lint) setup; lint ;;
  test)
    setup
    lint
    # exit 5 (no tests collected) must fail CI rather than pass silently.
    pytest "$@"
    ;;
  demo) setup; python tools/demo.py "$@" ;;
  bench) setup; for b in bench/[!_]*.py; do echo "== $b"; python "$b" "$@"; done ;;
  fuzz) setup; HYPOTHESIS_PROFILE=long pytest tests/property "$@" ;;
  faults) setup; python tools/fault_table.py "$@" ;;
  sim) setup; exec .bin/vcsim "$@" ;;
  *) echo "usage: bash tools/dev.sh setup|test|lint|demo|bench|fuzz|faults|sim" >&2; exit 2 ;;
esac
