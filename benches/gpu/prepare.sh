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
# Stripped and compressed, the binaries and the runtime take a fifth of their size; the
# check unpacks them there. The whole payload must stay under the 64 MiB that travel.
strip "$payload/tagfleet" "$payload/tagfleet_models_tests"
xz -T0 -6 "$payload/tagfleet" "$payload/tagfleet_models_tests" "$payload"/lib/libonnxruntime.so.1*
size=$(du -sm "$payload" | cut -f1)
echo "payload: $size MiB"
[ "$size" -lt 60 ] || { echo "prepare: the payload is over 60 MiB" >&2; exit 1; }
echo "carry: $payload"
