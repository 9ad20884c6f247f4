#!/usr/bin/env bash
# Builds the Debian 12 test-host image (debootstrap + podman import) unless an image built by this
# same script is present already (the script's sha256 is the image's sdkit.build label).
# The hosts boot systemd and run sshd, as the fleet's servers do; tests/hosts/testhosts.py starts
# them with a host key and an authorized key of their own (none is baked into the image).
# Usage: tests/hosts/build-image.sh [IMAGE]
set -euo pipefail

image="${1:-localhost/sophon-sd-test-debian12:latest}"
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
build_id="$(sha256sum "$0" | cut -c1-16)"

if [ "$(podman image inspect --format '{{ index .Labels "sdkit.build" }}' "$image" 2>/dev/null)" = "$build_id" ]; then
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
echo "debootstrap bookworm from $mirror into $rootfs (about two minutes)"
# What Ansible needs, plus what makes the container a server: systemd as PID 1 and sshd.
# The roles install everything else, so the tests exercise that.
debootstrap --variant=minbase \
  --include=python3,python3-apt,ca-certificates,systemd,systemd-sysv,dbus,openssh-server \
  bookworm "$rootfs" "$mirror" >/dev/null
# Containers started from a plain rootfs have no apt sources of their own.
echo "deb $mirror bookworm main" >"$rootfs/etc/apt/sources.list"

# Host keys come from the test run (one per host, recorded in its known_hosts): none in the image.
rm -f "$rootfs"/etc/ssh/ssh_host_*
cat >"$rootfs/etc/ssh/sshd_config.d/sdkit-test-host.conf" <<'CONF'
# sophon-sd-kit test host: the run mounts this host's key and the run's client key.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
# Ansible and testinfra multiplex many sessions over one connection per host.
MaxSessions 64
MaxStartups 64:30:128
CONF
install -d -m 0700 "$rootfs/root/.ssh"

# Units that make no sense in a container, or that would take apt's lock in the middle of a test.
for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer \
            console-getty.service getty@tty1.service systemd-timesyncd.service; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
: >"$rootfs/etc/machine-id"

tar -C "$rootfs" -c . | podman import \
  --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL SIGRTMIN+3' --change "LABEL sdkit.build=$build_id" \
  - "$image" >/dev/null
echo "built $image"
