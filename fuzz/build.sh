#!/usr/bin/env bash
# Builds every fuzz target (cargo +nightly fuzz build: ASan, debug assertions).
# Exits 0 with a one-line reason when there is no nightly toolchain or
# cargo-fuzz cannot be installed, so CI can always call it.
set -uo pipefail
cd "$(dirname "$0")"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/build.sh: skipped: no nightly toolchain (cargo +nightly) on this machine"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/build.sh: installing cargo-fuzz" >&2
    if ! cargo install cargo-fuzz --locked >/tmp/cargo-fuzz-install.log 2>&1; then
        echo "fuzz/build.sh: skipped: cargo-fuzz could not be installed (see /tmp/cargo-fuzz-install.log)"
        exit 0
    fi
fi
set -e
cargo +nightly fuzz build
echo "fuzz/build.sh: built $(cargo fuzz list | tr '\n' ' ')"
