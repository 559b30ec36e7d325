#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test of the workspace,
# with a local S3-compatible server started (and installed on first use) for the S3 backend.
set -euo pipefail
cd "$(dirname "$0")/.."
# A clean clone builds once: incremental artifacts would only double the disk it needs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "==> cargo doc -D warnings (broken intra-doc links, bad doc markup)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --quiet

echo "==> the fuzz target still builds (running it needs nightly: fuzz/README.md)"
cargo check --quiet --manifest-path fuzz/Cargo.toml

echo "==> chromium for the dashboard's browser test (tests/dashboard.rs)"
if ! command -v chromium >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "    installing Debian's chromium package (once)"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y -qq chromium >/dev/null 2>&1; then
            apt-get update -qq >/dev/null 2>&1 || true
            apt-get install -y -qq chromium >/dev/null 2>&1 ||
                echo "    cannot install chromium: the dashboard test will say so and skip"
        fi
    else
        echo "    chromium is missing and cannot be installed here (not root, or no apt-get): the dashboard test will say so and skip"
    fi
fi

# The multi-host test builds hosts out of network namespaces with iproute2's `ip` (as root; it
# skips itself otherwise).
if [[ $(id -u) -eq 0 ]] && ! command -v ip >/dev/null; then
    echo "==> installing iproute2 (for the multi-host test)"
    if command -v apt-get >/dev/null; then
        apt-get install -y -qq iproute2 >/dev/null || { apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null; }
    elif command -v dnf >/dev/null; then
        dnf install -y -q iproute
    elif command -v apk >/dev/null; then
        apk add -q iproute2
    fi
fi

echo "==> cargo test (with a local S3-compatible server and a NATS server with JetStream)"
scripts/with-s3.sh scripts/with-nats.sh cargo test --workspace --all-features --no-fail-fast
