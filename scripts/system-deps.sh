#!/usr/bin/env bash
# Debian packages the project needs to build and run: libvirt headers for libvirt-python.
# Installs them when run as root; otherwise prints the one command that does.
set -euo pipefail
packages=(libvirt-dev pkg-config)
[ "${WITH_BROWSER:-0}" = 1 ] && packages+=(chromium)
[ "${WITH_SERVICES:-0}" = 1 ] && packages+=(redis-server postgresql)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "Missing Debian packages. Install them with:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
