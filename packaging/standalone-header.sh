#!/bin/sh
# imgcache @VERSION@ (linux-@ARCH@), standalone: copy this one file onto a host and run it; no Node.js
# needed. It is this shell script followed by a gzip'ed tar of imgcache's tree (the CLI's bundle and
# its own Node.js from the npm registry). The first run checks the payload's sha256 and unpacks it once
# into a directory named by that hash; later runs start it directly.
#   as root: /var/cache/imgcache/standalone/   otherwise: ${XDG_CACHE_HOME:-~/.cache}/imgcache/standalone/
#   IMGCACHE_STANDALONE_DIR overrides both.
set -eu
sha=@SHA256@
skip=@SKIP@
if [ -n "${IMGCACHE_STANDALONE_DIR:-}" ]; then
  base=$IMGCACHE_STANDALONE_DIR
elif [ "$(id -u)" = 0 ]; then
  base=/var/cache/imgcache/standalone
else
  base=${XDG_CACHE_HOME:-${HOME:?imgcache: HOME is not set; set IMGCACHE_STANDALONE_DIR}/.cache}/imgcache/standalone
fi
tree=$base/$(printf %.16s "$sha")
if [ ! -x "$tree/bin/imgcache" ]; then
  self=$(readlink -f "$0")
  if [ "$(tail -n "+$skip" "$self" | sha256sum | cut -d' ' -f1)" != "$sha" ]; then
    echo "imgcache: $self is damaged or truncated (its payload's sha256 is not $sha): copy it again" >&2
    exit 1
  fi
  umask 022
  mkdir -p "$base"
  tmp=$(mktemp -d "$base/.unpack-XXXXXX")
  if ! tail -n "+$skip" "$self" | tar -xzf - -C "$tmp" --no-same-owner; then
    rm -rf "$tmp"
    echo "imgcache: cannot unpack into $base (set IMGCACHE_STANDALONE_DIR to a writable directory)" >&2
    exit 1
  fi
  chmod 755 "$tmp"
  # Renamed into place whole; when another run got there first, its tree is kept.
  mv -T "$tmp" "$tree" 2>/dev/null || rm -rf "$tmp"
fi
# Only a tree this user owns is run: code unpacked by another user is never executed (root above all).
if [ ! -O "$tree" ] || [ ! -O "$tree/bin/imgcache" ]; then
  echo "imgcache: $tree is not owned by $(id -un); remove it or set IMGCACHE_STANDALONE_DIR" >&2
  exit 1
fi
exec "$tree/bin/imgcache" "$@"
exit 1
