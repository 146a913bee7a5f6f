#!/usr/bin/env bash
# Installs what imgcache needs on a Debian/Ubuntu machine, as root, then the npm packages and a build.
#   scripts/setup.sh          the CLI and its demo: qemu-utils, python3 (nova-compatible locks), curl
#   scripts/setup.sh --test   everything the test suite runs for real: openssh-server (sshd nodes),
#                             glance-api and keystone (a real image service), python3-oslo.concurrency
#                             (a real nova lock holder), python3-nova (nova-compute's own image
#                             cache pass, the oracle prune is checked against), iproute2 (the
#                             namespaced test network), time (peak RSS in the benchmarks), zsh
#                             (the zsh completion test), debootstrap (the Node-less Debian 12 root
#                             the packaging test installs imgcache in), aria2, opentracker and
#                             mktorrent (precache --via p2p: aria2c on the nodes and as the seed,
#                             opentracker as the tracker; mktorrent checks our torrents)
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

packages=(qemu-utils python3 curl ca-certificates coreutils)
if [[ "${1:-}" == --test ]]; then
  packages+=(openssh-server openssh-client python3-oslo.concurrency python3-nova glance-api keystone sqlite3 iproute2 procps util-linux time zsh debootstrap aria2 opentracker mktorrent)
fi

export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -q -o DPkg::Lock::Timeout=600 "$@" >&2; }
# Install with apt; when the lists are stale (a 404) or empty, refresh them and try once more.
apt_install() { apt_get install -y --no-install-recommends "$@" || { apt_get update && apt_get install -y --no-install-recommends "$@"; }; }

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if (( ${#missing[@]} )); then
  if [[ $(id -u) != 0 ]]; then
    log "missing Debian packages: ${missing[*]}; run as root or install them first"; exit 1
  fi
  log "installing ${missing[*]} (apt; glance-api and keystone take about two minutes)"
  apt_get update || true
  apt_install "${missing[@]}"
fi

# shellcheck source=scripts/node-env.sh
source scripts/node-env.sh
# Node.js from apt when a configured repository has 20.10 or newer (Debian 13, nodesource's).
nodejs_candidate() { apt-cache policy nodejs 2>/dev/null | awk '/Candidate:/ {print $2}'; }
if ! command -v node >/dev/null && [[ $(id -u) == 0 ]]; then
  candidate=$(nodejs_candidate)
  if [[ -z $candidate || $candidate == '(none)' ]]; then
    apt_get update || true
    candidate=$(nodejs_candidate)
  fi
  if [[ -n $candidate && $candidate != '(none)' ]] && dpkg --compare-versions "$candidate" ge 20.10; then
    log "installing nodejs $candidate (apt)"
    apt_install nodejs
    # nodesource's nodejs carries npm (and conflicts with Debian's); Debian's does not.
    if ! command -v npm >/dev/null && [[ $(dpkg -L nodejs 2>/dev/null) != *'/usr/bin/npm'* ]]; then
      apt_install npm
    fi
  fi
fi
# Otherwise (Debian 12's and Ubuntu 24.04's own nodejs are 18, too old): Node.js and npm from the npm
# registry itself, into .node/ in the checkout; node-env.sh puts them on PATH for the scripts.
if ! node_ok; then
  log "no Node.js 20.10 or newer here ($(node --version 2>/dev/null || echo 'none')): taking one from the npm registry into .node/"
  PATH="$(scripts/node-from-npm.sh "$PWD/.node"):$PATH"
  node_ok || { log "the Node.js in .node/ does not run here"; exit 1; }
fi
command -v npm >/dev/null || { log "npm is missing: apt-get install npm, then run this again"; exit 1; }

if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  log "installing npm packages (npm ci)"
  npm ci --no-audit --no-fund --no-update-notifier >&2
fi

log "building"
npm run --silent build >&2
