#!/usr/bin/env bash
# Installs what imgcache needs on a Debian/Ubuntu machine, as root, then the npm packages and a build.
#   scripts/setup.sh          the CLI and its demo: qemu-utils, python3 (nova-compatible locks), curl
#   scripts/setup.sh --test   everything the test suite runs for real: openssh-server (sshd nodes),
#                             glance-api and keystone (a real image service), python3-oslo.concurrency
#                             (a real nova lock holder), iproute2 (the namespaced test network),
#                             time (peak RSS in the benchmarks)
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

packages=(qemu-utils python3 curl ca-certificates coreutils)
if [[ "${1:-}" == --test ]]; then
  packages+=(openssh-server openssh-client python3-oslo.concurrency glance-api keystone sqlite3 iproute2 procps util-linux time)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if (( ${#missing[@]} )); then
  if [[ $(id -u) != 0 ]]; then
    log "missing Debian packages: ${missing[*]}; run as root or install them first"; exit 1
  fi
  log "installing ${missing[*]} (apt; glance-api and keystone take about two minutes)"
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" >&2; }
  apt-get update -q -o DPkg::Lock::Timeout=600 >&2 || true
  apt_install || { apt-get update -q -o DPkg::Lock::Timeout=600 >&2 && apt_install; }
fi

# Node.js from apt when a configured repository has 20.10 or newer (Debian 13, Ubuntu 24.04,
# nodesource); Debian 12's own nodejs is 18, too old: then say what to do.
if ! command -v node >/dev/null && [[ $(id -u) == 0 ]]; then
  candidate=$(apt-cache policy nodejs 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [[ -n $candidate && $candidate != '(none)' ]] && dpkg --compare-versions "$candidate" ge 20.10; then
    log "installing nodejs $candidate (apt)"
    apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends nodejs >&2
    # nodesource's nodejs carries npm (and conflicts with Debian's); Debian's does not.
    if ! command -v npm >/dev/null && [[ $(dpkg -L nodejs 2>/dev/null) != *'/usr/bin/npm'* ]]; then
      apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends npm >&2
    fi
  fi
fi
command -v node >/dev/null || {
  log "Node.js 20.10 or newer is needed and no apt repository here has it: add nodesource's (https://github.com/nodesource/distributions) and run this again"
  exit 1
}
command -v npm >/dev/null || { log "npm is missing: apt-get install npm, then run this again"; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
minor=$(node -p 'process.versions.node.split(".")[1]')
(( major > 20 || (major == 20 && minor >= 10) )) || { log "Node.js $(node --version) is too old: imgcache needs 20.10 or newer"; exit 1; }

if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  log "installing npm packages (npm ci)"
  npm ci --no-audit --no-fund >&2
fi

log "building"
npm run --silent build >&2
