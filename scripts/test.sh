#!/usr/bin/env bash
# Runs berth's whole test suite: unit tests, the openraft storage suite,
# and the multi-process cluster and CLI tests (real berthd processes on
# loopback). Installs missing system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --workspace --bins
# The multi-process tests start whole clusters and containers; two at a
# time keeps a 2-core machine responsive enough for their timing.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
cargo test --workspace --no-fail-fast
