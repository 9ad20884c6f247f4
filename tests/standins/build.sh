#!/usr/bin/env bash
# Builds the STAND-INS for Sophgo's vendor files that the kit's tests install. They exist only to
# exercise the kit's install, guard and parsing logic on hosts without a BM1684X card; they hold no
# driver, no runtime library and no TPU code, and the kit never ships or installs them outside tests.
#
# Usage: tests/standins/build.sh OUT_DIR [TORCH_VERSION]
# Writes into OUT_DIR (deterministic: the same inputs give byte-identical files):
#   sophon-driver_0.4.9_amd64.deb, sophon-libsophon_0.4.9_amd64.deb, sophon-libsophon-dev_0.4.9_amd64.deb
#   torch_tpu-2.1.0.post1-cp311-cp311-linux_x86_64.whl  (Sophgo-shaped; pairs with TORCH_VERSION,
#                                                        default 2.13.0, the test profile's torch)
#   torch_tpu-2.1.0.post1-cp310-cp310-linux_x86_64.whl  (the same for Python 3.10: "wrong Python" test)
#   google/torch_tpu-0.2.0-py3-none-any.whl             (shaped like PyPI's torch-tpu, Google's)
#   standins.yml                                        (the roles' version and sha256 variables for them)
set -euo pipefail

out="${1:?usage: build.sh OUT_DIR [TORCH_VERSION]}"
torch_version="${2:-2.13.0}"
version=0.4.9
torch_tpu_version=2.1.0.post1
here="$(cd "$(dirname "$0")" && pwd)"

mkdir -p "$out" "$out/google"
out="$(realpath "$out")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH=1690848000  # 2023-08-01, libsophon 0.4.9's release month
umask 022

note="STAND-IN built by sophon-sd-kit tests/standins: not Sophgo's package, no driver or runtime inside."

# deb PKG DEPENDS DESCRIPTION: packs $work/PKG (files laid out under it) with dpkg-deb.
deb() {
  local pkg="$1" depends="$2" description="$3" root="$work/$1"
  mkdir -p "$root/DEBIAN" "$root/usr/share/doc/$pkg"
  echo "$note" >"$root/usr/share/doc/$pkg/README.standin"
  cat >"$root/DEBIAN/control" <<EOF
Package: $pkg
Version: $version
Architecture: amd64
Maintainer: sophon-sd-kit tests <tests@sdkit.invalid>
Depends: $depends
Section: misc
Priority: optional
Description: STAND-IN for Sophgo's $pkg $version ($description)
 $note
EOF
  chmod 0755 "$root/DEBIAN"/post* 2>/dev/null || true
  find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  dpkg-deb --root-owner-group -Zgzip --build "$root" "$out/${pkg}_${version}_amd64.deb" >/dev/null
}

# sophon-libsophon: the runtime's layout, bm-smi, and a postinst doing what Sophgo's does.
lib="$work/sophon-libsophon"
prefix="$lib/opt/sophon/libsophon-$version"
mkdir -p "$prefix/bin" "$prefix/lib" "$prefix/data"
sed "s/@VERSION@/$version/" "$here/bm-smi" >"$prefix/bin/bm-smi"
chmod 0755 "$prefix/bin/bm-smi"
# No lib*.so placeholders: ldconfig would warn about every non-ELF "library" on each run.
echo "$note" >"$prefix/lib/README.standin"
echo "$note" >"$prefix/data/README.standin"
mkdir -p "$lib/DEBIAN"
cat >"$lib/DEBIAN/postinst" <<EOF
#!/bin/sh
# STAND-IN postinst: what Sophgo's sophon-libsophon postinst does.
set -e
ln -sfn /opt/sophon/libsophon-$version /opt/sophon/libsophon-current
echo "/opt/sophon/libsophon-current/lib" >/etc/ld.so.conf.d/libsophon.conf
ldconfig
echo 'export PATH=\$PATH:/opt/sophon/libsophon-current/bin' >/etc/profile.d/libsophon-bin-path.sh
EOF
cat >"$lib/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# STAND-IN postrm: undoes the postinst so tests can start again from a clean host.
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
  rm -f /opt/sophon/libsophon-current /etc/ld.so.conf.d/libsophon.conf /etc/profile.d/libsophon-bin-path.sh
  ldconfig || true
fi
EOF
deb sophon-libsophon "libc6 (>= 2.23), libncurses5 (>= 6.0)" "runtime libraries and tools"

# sophon-libsophon-dev: headers, depending on the same runtime version.
dev="$work/sophon-libsophon-dev/opt/sophon/libsophon-$version"
mkdir -p "$dev/include"
echo "/* $note */" >"$dev/include/bmlib_runtime.h"
deb sophon-libsophon-dev "sophon-libsophon (= $version)" "development files"

# sophon-driver: the DKMS package's layout; its postinst would build and load bmsophon. The stand-in
# builds nothing and never runs modprobe (test hosts are containers).
drv="$work/sophon-driver/opt/sophon/driver-$version"
mkdir -p "$drv" "$work/sophon-driver/DEBIAN"
printf 'PACKAGE_NAME="bmsophon"\nPACKAGE_VERSION="%s"\nBUILT_MODULE_NAME[0]="bmsophon"\n# %s\n' \
  "$version" "$note" >"$drv/dkms.conf"
cat >"$work/sophon-driver/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# STAND-IN postinst: Sophgo's runs dkms build/install and `modprobe bmsophon`; this one does neither.
set -e
echo "sophon-driver stand-in: no kernel module to build or load"
EOF
deb sophon-driver "dkms" "BM1684X PCIe driver, DKMS module bmsophon"

# The torch_tpu wheels.

python3 "$here/make_wheel.py" sophgo "$out" --python cp311 --torch "$torch_version" --version "$torch_tpu_version" >/dev/null
python3 "$here/make_wheel.py" sophgo "$out" --python cp310 --torch "$torch_version" --version "$torch_tpu_version" >/dev/null
python3 "$here/make_wheel.py" google "$out/google" >/dev/null

sum() { sha256sum "$out/$1" | cut -d' ' -f1; }
cat >"$out/standins.yml" <<EOF
# Written by tests/standins/build.sh: the roles' variables for these STAND-INS (tests only).
sophon_libsophon_version: "$version"
sophon_libsophon_driver_sha256: $(sum "sophon-driver_${version}_amd64.deb")
sophon_libsophon_sha256: $(sum "sophon-libsophon_${version}_amd64.deb")
sophon_libsophon_dev_sha256: $(sum "sophon-libsophon-dev_${version}_amd64.deb")
sophon_torch_tpu_version: "$torch_tpu_version"
sophon_torch_tpu_sha256: $(sum "torch_tpu-${torch_tpu_version}-cp311-cp311-linux_x86_64.whl")
standin_torch_tpu_cp310_sha256: $(sum "torch_tpu-${torch_tpu_version}-cp310-cp310-linux_x86_64.whl")
standin_google_torch_tpu_sha256: $(sum "google/torch_tpu-0.2.0-py3-none-any.whl")
EOF
echo "stand-ins in $out"
