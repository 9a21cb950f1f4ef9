#!/usr/bin/env bash
# The README's first command: prepare this machine (as root), build rce-guard, and watch it
# catch a reverse shell in a pod of a private containerd. Pass `block` or `kill` to see the
# other modes: `bash hack/demo.sh block`.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-detect}
bash hack/setup.sh
cargo build --workspace --bins --quiet
exec ./target/debug/rce-guard-demo "$mode"
