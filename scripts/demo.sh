#!/usr/bin/env bash
# The README's first command: set up (as root on a fresh Debian machine) and run the main job on an
# embedded default: a throwaway set of Nova-like compute hosts on this machine and a local image source.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck source=scripts/node-env.sh
source scripts/node-env.sh
exec npx --no-install tsx scripts/demo.ts "$@"
