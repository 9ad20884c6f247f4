#!/usr/bin/env bash
# Builds local bare git repositories that stand in for upstream GitHub in offline tests:
# each is made from the PyPI sdist and tagged like upstream. diffusers also gets the
# training script reconstructed for the unit tests, since the sdist has no examples/.
# Writes OUT/<name>.git and OUT/libraries.yml (the role's sophon_upstream_libraries with
# these repositories' commits). Usage: make-upstream-repos.sh SOURCES_DIR OUT_DIR
set -euo pipefail

sources="$(realpath "$1")"
out="$2"
here="$(cd "$(dirname "$0")" && pwd)"
lora_fixture="$here/../unit/patches/fixtures/train_text_to_image_lora.v0.20.0.py"

mkdir -p "$out"
out="$(realpath "$out")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Fixed identity and dates make the commits, and so the pins in libraries.yml, reproducible.
export GIT_AUTHOR_NAME=sdkit-tests GIT_AUTHOR_EMAIL=tests@sdkit.invalid
export GIT_COMMITTER_NAME=sdkit-tests GIT_COMMITTER_EMAIL=tests@sdkit.invalid
export GIT_AUTHOR_DATE="2023-08-01T00:00:00Z" GIT_COMMITTER_DATE="2023-08-01T00:00:00Z"

echo "sophon_upstream_libraries:" >"$out/libraries.yml.new"
for spec in transformers=4.29.1 accelerate=0.16.0 diffusers=0.20.0; do
  name="${spec%=*}" version="${spec#*=}"
  tree="$work/$name"
  mkdir -p "$tree"
  tar -C "$tree" --strip-components=1 -xzf "$sources/$name-$version.tar.gz"
  # What sdist building adds and a git checkout does not have.
  rm -rf "$tree/PKG-INFO" "$tree"/src/*.egg-info
  if [ "$name" = diffusers ]; then
    install -D -m 0644 "$lora_fixture" "$tree/examples/text_to_image/train_text_to_image_lora.py"
  fi
  git -C "$tree" init -q -b main
  git -C "$tree" add -A
  git -C "$tree" commit -q -m "$name $version from the PyPI sdist (test stand-in for upstream)"
  git -C "$tree" tag "v$version"
  rm -rf "$out/$name.git"
  git clone -q --bare "$tree" "$out/$name.git"
  sha256="$(sha256sum "$sources/$name-$version.tar.gz" | cut -d' ' -f1)"
  commit="$(git -C "$tree" rev-parse HEAD)"
  printf '  - {name: %s, version: "%s", tag: v%s, commit: %s, sha256: %s}\n' \
    "$name" "$version" "$version" "$commit" "$sha256" >>"$out/libraries.yml.new"
done
mv "$out/libraries.yml.new" "$out/libraries.yml"
echo "upstream stand-in repositories in $out"
