#!/usr/bin/env bash
# Builds the Debian 12 test-host image (debootstrap + podman import) unless it exists already.
# Usage: tests/hosts/build-image.sh [IMAGE]
set -euo pipefail

image="${1:-localhost/sophon-sd-test-debian12:latest}"
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

if podman image exists "$image"; then
  echo "test-host image $image already present"
  exit 0
fi

# Use the same Debian mirror as this machine's apt: the build hosts reach no other.
mirror="$( { grep -rhoE '^(URIs:|deb)[[:space:]]+(\[[^]]*\][[:space:]]+)?https?://[^[:space:]]+/debian/?' \
  /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true; } | awk '{print $NF}' | head -n1)"
if [ -z "$mirror" ]; then
  echo "build-image: no Debian mirror found in /etc/apt/sources.list*; set one up for apt first" >&2
  exit 1
fi

rootfs="$(mktemp -d /var/tmp/sophon-sd-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm from $mirror into $rootfs (about a minute)"
debootstrap --variant=minbase \
  --include=python3,python3-apt,ca-certificates \
  bookworm "$rootfs" "$mirror" >/dev/null
# Only what Ansible itself needs: the roles install the rest, so the tests exercise that.
# Containers started from a plain rootfs have no apt sources of their own.
echo "deb $mirror bookworm main" >"$rootfs/etc/apt/sources.list"
tar -C "$rootfs" -c . | podman import --change 'CMD ["sleep", "infinity"]' - "$image" >/dev/null
echo "built $image"
