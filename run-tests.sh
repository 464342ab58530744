#!/usr/bin/env bash
# The whole test suite: every Rust crate, the loom models, and the Python
# package (installed into a fresh virtualenv). CI runs exactly this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

echo "== Rust: cargo test (all crates but the Python extension)"
cargo test --quiet --no-fail-fast

echo "== Rust: loom models of the work item state machine"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test --quiet -p wq-core --lib loom

echo "== Python: pytest on a fresh install of ./wq-python"
wq-python/run-tests.sh
