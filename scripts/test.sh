#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test of the workspace,
# with a local S3-compatible server started (and installed on first use) for the S3 backend.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "==> cargo doc -D warnings (broken intra-doc links, bad doc markup)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --quiet

echo "==> the fuzz target still builds (running it needs nightly: fuzz/README.md)"
cargo check --quiet --manifest-path fuzz/Cargo.toml

echo "==> cargo test (with a local S3-compatible server)"
scripts/with-s3.sh cargo test --workspace --all-features --no-fail-fast
