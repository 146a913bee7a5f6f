#!/usr/bin/env bash
# The README's second command (and CI's): set up everything the tests use for real, then run the
# whole suite: lint, typecheck, build, manifest and README checks, unit, integration and e2e tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec npm test
