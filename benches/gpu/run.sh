#!/usr/bin/env bash
# The GPU check, in one call of at most 8 minutes on a machine with an NVIDIA GPU (the
# H200 machine: CUDA 13 driver, Python with PyTorch and its CUDA 13 libraries, no network).
# Run benches/gpu/prepare.sh first, here, and carry benches/gpu/payload.
#
#   benches/gpu/run.sh [OUT]        writes OUT/RESULTS.md (default: benches/gpu/out)
#   GPU_CHECK_IMAGES=2000 GPU_CHECK_SECONDS=4: corpus size and seconds per bound
#
# It checks what the machine allows and says plainly what it could not check:
#   1. the preprocessing kernel (NVRTC) against its CPU reference, on the sample photos and
#      on fresh random images, to 1e-5;
#   2. the CUDA execution provider really active, when a CUDA-enabled ONNX Runtime
#      (onnxruntime-gpu) is on the machine;
#   3. engine throughput at batch 32/64/128/256 and end-to-end throughput with CPU decode
#      on a corpus of real-sized JPEGs, with the executor busy ratio; with GPU
#      preprocessing and, for comparison, with CPU preprocessing.
set -uo pipefail
cd "$(dirname "$0")/../.."
payload=benches/gpu/payload
out=${1:-benches/gpu/out}
mkdir -p "$out"
report="$out/RESULTS.md"
log="$out/run.log"
: >"$log"
say() { echo "$*" | tee -a "$report"; }
started=$(date +%s)
left() { echo $((470 - ($(date +%s) - started))); } # seconds of the 8-minute budget left

[ -d "$payload" ] || { echo "no $payload: run benches/gpu/prepare.sh before carrying" >&2; exit 1; }
for f in "$payload"/*.xz "$payload"/lib/*.xz; do
    [ -e "${f%.xz}" ] || xz -dk "$f"
done
chmod +x "$payload/tagfleet" "$payload/tagfleet_models_tests"
bin=$payload/tagfleet
export TAGFLEET_MODELS_DIR=$payload/models TAGFLEET_TEST_PHOTOS=$payload/photos

: >"$report"
say "# GPU check — $(date -u +%Y-%m-%dT%H:%MZ)"
say ""
say '```'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$report"
nproc | sed 's/^/cpu cores: /' | tee -a "$report"
say '```'

# NVRTC: PyTorch's CUDA 13 wheels bring libnvrtc, and so does a CUDA 13 toolkit; the
# kernel check loads it by path.
nvrtc=$(python3 - <<'PY' 2>/dev/null
import glob, site, sys
paths = site.getsitepackages() + [site.getusersitepackages()]
hits = [p for d in paths for p in glob.glob(d + "/nvidia/**/libnvrtc.so.13*", recursive=True)]
hits += glob.glob("/usr/local/cuda*/lib64/libnvrtc.so.13*")
print(sorted(hits)[-1] if hits else "")
PY
)
# ONNX Runtime: a CUDA-enabled build if the machine has one, else the CPU build carried.
gpu_ort=$(python3 - <<'PY' 2>/dev/null
import glob, site
paths = site.getsitepackages() + [site.getusersitepackages()]
hits = [p for d in paths for p in glob.glob(d + "/onnxruntime/capi/libonnxruntime.so.1*")]
cuda = [p for p in hits if glob.glob(p.rsplit("/", 1)[0] + "/libonnxruntime_providers_cuda.so")]
print(cuda[0] if cuda else "")
PY
)
say ""
say "## 1. Preprocessing kernel against the CPU reference, and the session reading it in place"
if [ -n "$nvrtc" ]; then
    export TAGFLEET_NVRTC_DYLIB=$nvrtc
    say "NVRTC: \`$nvrtc\`"
    # The GPU tests are #[ignore]d (skipped where there is no GPU): --include-ignored runs
    # them, and TAGFLEET_REQUIRE_GPU fails the guard test if no GPU is usable here. A GPU
    # test that cannot run fails; none passes unrun.
    if TAGFLEET_REQUIRE_GPU=1 timeout 100 "$payload/tagfleet_models_tests" gpu_preprocess \
        --include-ignored --test-threads 1 --nocapture >>"$log" 2>&1; then
        say "PASS: PTX compile, reference = CPU path, GPU kernel = reference (photos and random images, ≤ 1e-5)."
    else
        say "FAIL (kernel): see run.log"
    fi
    # The in-place check needs a CUDA-enabled ONNX Runtime as well.
    if [ -z "$gpu_ort" ]; then
        say "NOT CHECKED: the session reading the kernel's output in place (no CUDA-enabled ONNX Runtime here)."
    elif TAGFLEET_ORT_DYLIB=$gpu_ort timeout 50 "$payload/tagfleet_models_tests" ort_backend \
        --include-ignored --test-threads 1 --nocapture >>"$log" 2>&1; then
        say "PASS: the session reads the kernel's output in place."
    else
        say "FAIL (in-place session): see run.log"
    fi
    grep -E "SKIPPED|seed|max rel|images checked|in place vs" "$log" | sed 's/^/    /' | tee -a "$report"
else
    say "NOT CHECKED: no libnvrtc in this machine's Python packages."
fi

say ""
say "## 2. CUDA execution provider"
if [ -n "$gpu_ort" ]; then
    ort=$gpu_ort
    devices=0
    say "CUDA-enabled ONNX Runtime: \`$gpu_ort\`"
else
    ort=$(ls "$payload"/lib/libonnxruntime.so.1* | grep -v '\.xz$' | head -n 1)
    devices=cpu
    say "NOT CHECKED: no CUDA-enabled ONNX Runtime (onnxruntime-gpu) on this machine, and it"
    say "cannot be downloaded there (the wheel is about 256 MB, over what travels)."
    say "The engine numbers below are the CPU executor's, for reference."
fi

# A corpus of real-sized JPEGs: the sample photos scaled to 1920 px on the long side.
corpus=$out/corpus
python3 - "$payload/photos" "$corpus" <<'PY' >>"$log" 2>&1 || cp -r "$payload/photos" "$corpus"
import sys, pathlib
from PIL import Image
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
for p in sorted(src.iterdir()):
    try:
        im = Image.open(p).convert("RGB")
    except Exception:
        continue
    s = 1920 / max(im.size)
    im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC).save(dst / (p.stem + ".jpg"), quality=90)
PY

say ""
say "## 3. Throughput (\`tagfleet bench\`, devices=$devices)"
say ""
say '| batch | device | preprocess | engine img/s | engine from pixels img/s | decode(+prep) img/s (all cores) | end-to-end img/s | e2e / bound | executors busy |'
say '|---|---|---|---|---|---|---|---|---|'
bench() { # batch preprocess
    local batch=$1 pre=$2 line
    [ "$(left)" -gt 60 ] || { say "| $batch | (skipped: time budget) | $pre | | | | | | |"; return; }
    line=$(timeout "$(( $(left) - 30 ))" "$bin" bench "$corpus" --images "${GPU_CHECK_IMAGES:-2000}" --seconds "${GPU_CHECK_SECONDS:-4}" \
        --max-batch "$batch" --devices "$devices" --preprocess "$pre" --ort-dylib "$ort" --json 2>>"$log" | tail -n 1)
    echo "$line" >>"$log"
    python3 - "$batch" "$pre" "$line" <<'PY' | tee -a "$report"
import json, sys
batch, pre, line = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    r = json.loads(line)
except Exception:
    print(f"| {batch} | (failed: see run.log) | {pre} | | | | | | |")
    sys.exit()
n = lambda k: "-" if r.get(k) is None else f"{r[k]:.0f}"
busy = r.get("busy_ratio")
busy = f"{busy:.0%}" if isinstance(busy, (int, float)) else "-"
print(f"| {batch} | {r['device']} | {r['preprocess']} | {n('engine_images_per_second')} | "
      f"{n('engine_from_pixels_images_per_second')} | {n('decode_images_per_second')} | "
      f"{n('end_to_end_images_per_second')} | {r['ratio']:.2f} | {busy} |")
PY
}
for batch in 32 64 128 256; do bench "$batch" gpu; done
kernels=$(python3 - "$log" <<'PY' 2>/dev/null
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(", ".join("batch %d: %.0f img/s" % (r["batch"], r["gpu_preprocess_images_per_second"])
                for r in rows if r.get("gpu_preprocess_images_per_second")))
PY
)
# The same end to end with the decode threads preprocessing, for the comparison.
for batch in 128 256; do bench "$batch" cpu; done
say ""
say "GPU preprocessing alone (upload + kernel, 1920 px JPEGs decoded): ${kernels:-not measured (see run.log)}"
say ""
say "Total: $(( $(date +%s) - started )) s."
