#!/usr/bin/env bash
# A fresh Debian 12 root file system with no Node.js in it, for the packaging tests.
#   debian-root.sh up DIR          DIR/root: a copy-on-write (overlayfs) root over a cached
#                                  `debootstrap --variant=minbase bookworm` root, with /proc, /sys,
#                                  /dev and /dev/pts mounted, resolv.conf copied and Debian's own apt
#                                  sources; prints DIR/root. Every `up` starts from the pristine root.
#   debian-root.sh run DIR CMD...  CMD in that root (chroot), as root, with a clean environment
#   debian-root.sh down DIR        unmounts everything under DIR and removes DIR; safe to repeat, and
#                                  run it after a failure too (a half-done `up` cleans up after itself)
# The debootstrap root is built once per machine (about a minute from Debian's mirror) under
# $IMGCACHE_TEST_CACHE (default /var/cache/imgcache-test), with apt's and npm's download caches beside
# it, shared by later runs. Needs root, debootstrap, and overlayfs in the kernel.
set -euo pipefail

cache=${IMGCACHE_TEST_CACHE:-/var/cache/imgcache-test}
base=$cache/bookworm-minbase
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

die() { printf 'debian-root.sh: %s\n' "$*" >&2; exit 1; }

ensure_base() {
  [[ -x $base/bin/sh ]] && return 0
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock 9 # another run building it: wait, then reuse its root
  [[ -x $base/bin/sh ]] && return 0
  local tmp=$base.tmp.$$
  rm -rf "$tmp"
  printf 'debian-root.sh: building the Debian 12 root in %s (debootstrap, once per machine)\n' "$base" >&2
  debootstrap --variant=minbase bookworm "$tmp" "$mirror" >&2 || { rm -rf "$tmp"; die "debootstrap failed"; }
  mv -T "$tmp" "$base"
}

down() {
  local dir=$1 root=$1/root
  [[ -d $dir ]] || return 0
  # Deepest first: the binds inside the root, then the overlay itself.
  local target
  while read -r target; do
    [[ -n $target ]] || continue
    umount "$target" 2>/dev/null || umount -l "$target"
  done < <(findmnt -R -n -l -o TARGET "$root" 2>/dev/null | sort -r)
  if findmnt -R -n -l -o TARGET "$root" >/dev/null 2>&1; then die "still mounted under $root"; fi
  rm -rf "$dir"
}

up() {
  local dir=$1 root=$1/root
  [[ $(id -u) == 0 ]] || die "must run as root (chroot, mount)"
  ensure_base
  mkdir -p "$dir/upper" "$dir/work" "$root" "$cache/apt-archives/partial" "$cache/npm"
  trap 'down "$dir"' ERR
  mount -t overlay overlay -o "lowerdir=$base,upperdir=$dir/upper,workdir=$dir/work" "$root"
  mount -t proc proc "$root/proc"
  mount --bind /sys "$root/sys"
  mount --bind /dev "$root/dev"
  mount --bind /dev/pts "$root/dev/pts"
  mkdir -p "$root/root/.npm"
  mount --bind "$cache/apt-archives" "$root/var/cache/apt/archives"
  mount --bind "$cache/npm" "$root/root/.npm"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  # The host's own trust anchors (a TLS-inspecting proxy's CA, say), as that host's operator would have
  # added them: ca-certificates, once installed in the root, builds them into its bundle.
  if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
    cp -rL /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
  fi
  # Debian's own sources, not the host's: a third-party repository there (nodesource's) would bring
  # a Node.js back into a root that must have none.
  rm -f "$root/etc/apt/sources.list.d/"*
  cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
  # No service starts inside the root when a package is installed.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  trap - ERR
  printf '%s\n' "$root"
}

run() {
  local root=$1/root
  shift
  [[ -x $root/bin/sh ]] || die "no root at $root (debian-root.sh up first)"
  local env=(HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin TERM=dumb)
  local name
  for name in http_proxy https_proxy no_proxy npm_config_registry NODE_EXTRA_CA_CERTS; do
    [[ -n ${!name:-} ]] && env+=("$name=${!name}")
  done
  exec chroot "$root" /usr/bin/env -i "${env[@]}" "$@"
}

case ${1:-} in
  up) up "${2:?DIR}" ;;
  down) down "${2:?DIR}" ;;
  run) dir=${2:?DIR}; shift 2; run "$dir" "$@" ;;
  *) die "usage: debian-root.sh up|run|down DIR [CMD...]" ;;
esac
