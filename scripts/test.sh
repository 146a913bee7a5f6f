#!/usr/bin/env bash
# The README's second command (and CI's): set up everything the tests use for real, then run the
# whole suite: lint, typecheck, build, manifest and README checks, unit, integration and e2e tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# shellcheck source=scripts/node-env.sh
source scripts/node-env.sh
exec npm test
