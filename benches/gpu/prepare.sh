#!/usr/bin/env bash
# Builds what the GPU check needs and stages it in benches/gpu/payload/ (git-ignored), small
# enough to travel with the working tree to a GPU machine that cannot download anything:
# the release binary, the models crate's test binary (the kernel checks), the model, the
# sample photos and the CPU ONNX Runtime library. Prints the paths to carry.
set -euo pipefail
cd "$(dirname "$0")/../.."

make --no-print-directory model photos >/dev/null
cargo build --release --locked --bin tagfleet
test_bin=$(cargo test --release --locked -p tagfleet-models --lib --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m["target"]["name"] == "tagfleet_models":
        print(m["executable"])' | tail -n 1)
[ -n "$test_bin" ] || { echo "prepare: no test binary for tagfleet-models" >&2; exit 1; }

payload=benches/gpu/payload
rm -rf "$payload" && mkdir -p "$payload/models/efficientnet-lite0" "$payload/lib"
cp target/release/tagfleet "$payload/"
cp "$test_bin" "$payload/tagfleet_models_tests"
cp models/efficientnet-lite0/{model.toml,model.onnx,labels.txt} "$payload/models/efficientnet-lite0/"
cp -r samples/photos "$payload/photos"
cp .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1* "$payload/lib/"
# The binaries shrink by two thirds compressed; the check unpacks them there.
xz -T0 -6 "$payload/tagfleet" "$payload/tagfleet_models_tests"
du -sh "$payload"
echo "carry: $payload"
