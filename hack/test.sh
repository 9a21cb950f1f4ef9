#!/usr/bin/env bash
# The project's test command (as root, on Debian 12):
#   1. hack/setup.sh: runtimes (runc, crun, containerd 1.7 and 2.1) and test images;
#   2. build everything, including the rce-guard binary the e2e tests run;
#   3. unit and integration tests of every crate except the e2e crate, at full parallelism;
#   4. the e2e tests against real containerd, a few at a time (each starts its own containerd,
#      agent and pods; the machine has 2 cores).
# Extra arguments go to the test binaries (e.g. `hack/test.sh --nocapture`).
# RCE_GUARD_E2E_THREADS sets the e2e parallelism (default 2).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/.."

log() { printf '[test] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "must run as root: the e2e tests start containerd and runc"
  exit 1
fi

bash hack/setup.sh

log "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

log "unit and integration tests"
cargo test --workspace --exclude rce-guard-e2e -- "$@"

log "e2e tests against real containerd (test threads: ${RCE_GUARD_E2E_THREADS:-2})"
cargo test -p rce-guard-e2e -- --test-threads="${RCE_GUARD_E2E_THREADS:-2}" "$@"
log "all tests passed"
