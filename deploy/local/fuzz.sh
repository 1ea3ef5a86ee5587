#!/usr/bin/env bash
# Fuzz the pgoutput decoder for a bounded time; fail on any crash.
#
#   deploy/local/fuzz.sh [seconds]        (default 60)
#
# Runs the `decode` target of fuzz/ (see fuzz/README.md) with libFuzzer, starting from a
# throwaway copy of fuzz/seeds/decode/ plus seeds made from crates/pgoutput/tests/golden/ when
# that folder exists, so the committed seeds never change. On a crash it prints the input as
# hex and the artifact path, and exits non-zero; reproduce with
#   cd fuzz && cargo fuzz run --sanitizer none decode <artifact>
#
# Works on the stable toolchain: with `--sanitizer none` every flag cargo-fuzz passes to rustc
# is a stable `-C`/`--cfg` flag (sancov passes and LLVM options), and libFuzzer itself is C++
# built by libfuzzer-sys with the system compiler. RUSTC_BOOTSTRAP is therefore not set: it
# is not needed, and it would let build scripts that probe for nightly features turn them on.
# cargo-fuzz is installed from crates.io (`cargo install --locked`) when missing.
#
# CARGO=... picks the cargo command (for example CARGO='cargo +stable').
set -euo pipefail

SECONDS_TO_RUN=${1:-60}
if ! [[ $SECONDS_TO_RUN =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [seconds]  (a positive whole number, default 60)" >&2
    exit 2
fi

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CARGO=${CARGO:-cargo}
FUZZ_DIR="$REPO_ROOT/fuzz"
GOLDEN_DIR="$REPO_ROOT/crates/pgoutput/tests/golden"
ARTIFACT_DIR="$FUZZ_DIR/artifacts/decode"

log() { echo "[fuzz] $*" >&2; }
# shellcheck disable=SC2086 # CARGO may hold a toolchain argument such as +stable
cargo_cmd() { $CARGO "$@"; }

CORPUS=$(mktemp -d "${TMPDIR:-/tmp}/pgfanout-fuzz-corpus.XXXXXX")
MARKER="$CORPUS.started"
cleanup() { rm -rf "$CORPUS" "$MARKER"; }
trap cleanup EXIT

if ! cargo_cmd fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo_cmd install cargo-fuzz --locked
fi

cp "$FUZZ_DIR"/seeds/decode/* "$CORPUS"/
if [[ -d $GOLDEN_DIR ]]; then
    log "adding seeds from $GOLDEN_DIR"
    (cd "$REPO_ROOT" && cargo_cmd run --quiet --locked -p pgoutput --example fuzz_seeds -- "$CORPUS" --golden "$GOLDEN_DIR")
fi
log "$(find "$CORPUS" -type f | wc -l) seeds"

cd "$FUZZ_DIR"
log "building the decode target"
cargo_cmd fuzz build --sanitizer none decode

mkdir -p "$ARTIFACT_DIR"
touch "$MARKER"
log "fuzzing for ${SECONDS_TO_RUN}s"
status=0
# -timeout: one input taking seconds is a hang worth failing on (libFuzzer's default is 20 min).
cargo_cmd fuzz run --sanitizer none decode "$CORPUS" -- \
    -max_total_time="$SECONDS_TO_RUN" -timeout=10 -print_final_stats=1 || status=$?

if [[ $status -ne 0 ]]; then
    log "FAILED: libFuzzer exited with status $status"
    found=0
    while IFS= read -r -d '' artifact; do
        found=1
        log "crashing input: $artifact"
        od -An -tx1 -v "$artifact" >&2
    done < <(find "$ARTIFACT_DIR" -type f -newer "$MARKER" -print0)
    if [[ $found -eq 0 ]]; then
        log "no new artifact in $ARTIFACT_DIR; see libFuzzer's output above"
    fi
    exit 1
fi
log "no crash in ${SECONDS_TO_RUN}s"
