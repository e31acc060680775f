#!/usr/bin/env bash
# `make test-arm64`: the device runtime tested on ARM64 (aarch64) under qemu user-mode emulation.
#
#   1. the emulated ARM64 Python (scripts/arm64-env.sh; cached in ~/.cache/edgetl/arm64/env-KEY);
#   2. small real bundles exported on this host, one per int8 preset, plus Fashion-MNIST images
#      (scripts/arm64_bundles.py; cached in ~/.cache/edgetl/arm64/bundles-KEY, KEY = the sources' hash);
#   3. edgetl-runtime installed from runtime/ of this work tree into runs/arm64/site (pip --target:
#      the package, its metadata and the edgetl-device console script);
#   4. pytest tests/arm64 inside the emulated Python as a Jetson Orin-like CPU (qemu -cpu cortex-a76:
#      Armv8.2-A with dot product), then the golden checks again as a Jetson Nano-like CPU
#      (cortex-a57: Armv8.0, no dot product), whose int8 kernels differ.
#
# Exit code: 0 only when every step and test passed. `--native` runs step 4's tests with the host's
# Python instead (no emulation), to tell an ARM-only failure from a general one.
# Results: runs/arm64 (results.json, export.log). Timeouts: EDGETL_ARM64_TIMEOUT seconds per pytest run.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO=$PWD
PY=${PY:-.venv/bin/python}
OUT=$REPO/runs/arm64
TIMEOUT=${EDGETL_ARM64_TIMEOUT:-900}
NATIVE=0
[ "${1:-}" = --native ] && NATIVE=1
start=$(date +%s)
step() { echo "=== test-arm64 [$(($(date +%s) - start)) s] $*"; }
fail() {
    step "FAILED: $*"
    echo "TEST-ARM64: FAIL ($*)"
    exit 1
}

rm -rf "$OUT" && mkdir -p "$OUT" || fail "cannot create $OUT"
[ -x "$PY" ] || fail "$PY not found: run make install first (the host exports the bundles)"

if [ $NATIVE = 0 ]; then
    step "1/4 emulated ARM64 environment (scripts/arm64-env.sh)"
    ENV=$(bash scripts/arm64-env.sh) || fail "the emulated ARM64 environment could not be built (see above)"
    ENV=${ENV##*$'\n'}
    sed 's/^/    /' "$ENV/versions.txt"
fi

step "2/4 bundles exported on the host (scripts/arm64_bundles.py)"
BUNDLES=$("$PY" scripts/arm64_bundles.py 2>"$OUT/export.log") || {
    tail -40 "$OUT/export.log"
    fail "bundle export"
}
BUNDLES=${BUNDLES##*$'\n'}
grep '^arm64_bundles:' "$OUT/export.log" | sed 's/^/    /'
echo "    $BUNDLES"

export EDGETL_ARM64_BUNDLES=$BUNDLES EDGETL_ARM64_OUT=$OUT
PYTEST=(-P -m pytest tests/arm64 -q -p no:cacheprovider)  # -P: the work tree is not on sys.path
if [ $NATIVE = 1 ]; then
    step "4/4 pytest tests/arm64 with the host's Python (--native)"
    EDGETL_DEVICE_SCRIPT=$(dirname "$PY")/edgetl-device timeout "$TIMEOUT" "$PY" "${PYTEST[@]}" || fail "tests/arm64 (native)"
else
    step "3/4 edgetl-runtime from runtime/ into runs/arm64/site"
    src=$(mktemp -d) || fail "mktemp"
    trap 'rm -rf "$src"' EXIT
    mkdir -p "$src/src" && cp runtime/pyproject.toml "$src/" && cp -r runtime/src/edgetl_runtime "$src/src/" ||
        fail "copying runtime/"
    "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --no-compile \
        --target "$OUT/site" "$src" || fail "pip install --target of runtime/"
    export EDGETL_ARM64_PATH=$OUT/site EDGETL_DEVICE_SCRIPT=$OUT/site/bin/edgetl-device EDGETL_ARM64_EXPECT_MACHINE=aarch64

    step "4/4 pytest tests/arm64 on ARM64 (qemu -cpu cortex-a76)"
    EDGETL_ARM64_CPU=cortex-a76 timeout "$TIMEOUT" "$ENV/bin/python" "${PYTEST[@]}" ||
        fail "tests/arm64 on emulated ARM64 (cortex-a76)"
    step "4/4 golden checks again on ARM64 without dot product (qemu -cpu cortex-a57)"
    EDGETL_ARM64_CPU=cortex-a57 timeout "$TIMEOUT" "$ENV/bin/python" "${PYTEST[@]}" -k "golden or environment" ||
        fail "tests/arm64 golden checks on emulated ARM64 (cortex-a57)"
fi

"$PY" - "$OUT/results.json" <<'EOF'
import json, sys
results = json.load(open(sys.argv[1]))
print(f"    {'cpu':<11} {'model':<17} {'min cos vs host':>15} {'min cos vs fp32':>15}")
for key, r in sorted(results.items()):
    cpu, kind, *rest = key.split(":")
    if kind == "golden":
        print(f"    {cpu:<11} {' '.join(rest):<17} {r['min_cosine']:>15.6f} {r['min_cosine_fp32']:>15.6f}")
    elif kind == "cycle":
        print(f"    {cpu:<11} 5-shot 10-way accuracy of the enrol/predict cycle: {r['accuracy_5shot_10way']:.3f}")
EOF
step "PASSED"
echo "TEST-ARM64: PASS"
