#!/usr/bin/env bash
# Runs the MQTT decoder fuzz target (fuzz/fuzz_targets/decode.rs) for a fixed time, starting
# from the committed corpus. Not part of CI: it needs a nightly toolchain and minutes of CPU.
#
#   fuzz/run.sh [SECONDS] [--update-corpus]
#
# SECONDS defaults to 300. New inputs go to fuzz/target/new-corpus; with --update-corpus they
# are merged into fuzz/corpus/decode, which is then minimised (cargo fuzz cmin), ready to
# commit. A crash stops the run and leaves its input in fuzz/artifacts/decode/ (replay it with
# `cargo +nightly fuzz run decode fuzz/artifacts/decode/crash-...`).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=300
update=false
for arg in "$@"; do
    case "$arg" in
        --update-corpus) update=true ;;
        *[!0-9]*) echo "usage: fuzz/run.sh [SECONDS] [--update-corpus]" >&2; exit 2 ;;
        *) secs=$arg ;;
    esac
done

toolchain=${FUZZ_TOOLCHAIN:-nightly}
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "fuzz/run.sh needs a $toolchain toolchain: rustup toolchain install $toolchain" >&2
    exit 1
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

committed=fuzz/corpus/decode
new=fuzz/target/new-corpus
mkdir -p "$committed" "$new"
echo "fuzzing decode for ${secs}s from $(ls "$committed" | wc -l) committed inputs"
# libFuzzer adds what it finds to the first directory and only reads the others.
cargo "+$toolchain" fuzz run decode "$new" "$committed" -- -max_total_time="$secs" -print_final_stats=1

if $update; then
    cp -n "$new"/* "$committed"/ 2>/dev/null || true
    cargo "+$toolchain" fuzz cmin decode "$committed"
    echo "$committed now holds $(ls "$committed" | wc -l) inputs"
fi
