"""Tag a folder of photos in plain Python: the baseline `tagfleet run` is compared with.

    .venv/bin/python benches/python_baseline.py .cache/corpus --out /tmp/tags.jsonl

What a competent Python engineer would write for the job `tagfleet run DIR` does: the
same model file, the same preprocessing, ONNX Runtime on every core, one JSON line per
image with the top-5 labels (softmax scores). It is meant to be a strong baseline:

  * JPEGs are decoded at a reduced DCT scale (`Image.draft`), the largest reduction that
    still leaves the model's crop at least at the model's input size, so a 12 MP photo
    decodes at 1/8 scale instead of in full (a decoder that always decodes in full and
    then resizes does several times the work for the same tensor).
  * EXIF orientation applied (`ImageOps.exif_transpose`, in place), alpha flattened onto
    white, greyscale to RGB, as tagfleet does.
  * The crop is the largest centred rectangle of the model's aspect ratio scaled by
    crop_fraction, resized with Pillow's antialiased bilinear filter (the convolution
    tagfleet's resizer implements too) straight from the crop box, without copying the
    crop; then (pixel - mean) / std, CHW float32.
  * Batches of at most --batch images (default: the model's [batch] max_batch, which
    tagfleet also uses as its largest batch), full graph optimisation, no intra-op
    spinning (as tagfleet: spinning threads take the cores the decoders need).
    per-process makes batches smaller when the folder is too small to keep every worker
    busy to the end (see per_process_batch()).

Two structures, --structure:

  per-process (default)  a pool of --workers processes; each holds its own ONNX Runtime
                         session with one intra-op thread and handles whole batches:
                         decode, preprocess, infer, top-5. Only result lines cross
                         processes, and every core runs the whole pipeline.
  decode-pool            the pool only decodes and preprocesses (uint8 crops at the
                         model's size come back to the parent); the parent normalises
                         and runs one session with intra_op_num_threads = cores.

per-process is the default because it was the faster of the two where we measured: on
2 cores (60 photos of 1..24 MP, three alternating runs each) by about 1%, which is within
noise there. Its advantage is structural and grows with the core count: ONNX Runtime's
CPU cost per image is lowest on one thread (compare benches/python_engine.py --threads 1
with its default), whereas in decode-pool the decoders and the intra-op threads contend
for the same cores, a preempted intra-op thread stalls the whole batch, and the parent's
inference, normalisation and output are serial. decode-pool stays selectable so the
choice can be checked on the machine at hand.

Timing: wall time from the start of main() (before the pool and the sessions are made)
until the last line is written; benches/compare.py times the whole process instead.
At the end one JSON line is printed: {"images": N, "seconds": wall, "images_per_second": r, ...}.
Images that fail to decode get an {"path": ..., "error": ...} line; the exit code is then 3.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = ROOT / "models" / "efficientnet-lite0"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
TOP_K = 5
ORIENTATION_TAG = 0x0112
# How much the crop of a draft-decoded JPEG must still be reduced to the input size
# (--min-reduction). 1.0 is what Image.draft is usually asked for; tagfleet asks for 1.5,
# which keeps its tags those of the full-size decode (models/tests/scaled_accuracy.rs).
MIN_REDUCTION = 1.0


class Model:
    """model.toml, the labels and the preprocessing they call for."""

    def __init__(self, model_dir: Path):
        spec = tomllib.loads((model_dir / "model.toml").read_text())
        self.path = model_dir / spec.get("onnx", "model.onnx")
        self.labels = (model_dir / spec.get("labels", "labels.txt")).read_text().splitlines()
        inp = spec["input"]
        self.input_name = inp["name"]
        self.width, self.height = int(inp["width"]), int(inp["height"])
        self.crop_fraction = float(inp.get("crop_fraction", 1.0))
        self.mean = np.array(inp["mean"], dtype=np.float32).reshape(1, 1, 1, 3)
        self.inv_std = (1.0 / np.array(inp["std"], dtype=np.float32)).reshape(1, 1, 1, 3)
        self.logits = spec["outputs"]["logits"]
        self.max_batch = int(spec.get("batch", {}).get("max_batch", 16))

    def crop_box(self, w: int, h: int) -> tuple[float, float, float, float]:
        """Largest centred rectangle of the model's aspect, scaled by crop_fraction,
        as a (left, top, right, bottom) box."""
        aspect = self.width / self.height
        cw, ch = (h * aspect, h) if w / h > aspect else (w, w / aspect)
        cw, ch = cw * self.crop_fraction, ch * self.crop_fraction
        left, top = (w - cw) / 2, (h - ch) / 2
        return (left, top, left + cw, top + ch)

    def draft_size(self, w: int, h: int) -> tuple[int, int]:
        """The smallest decoded size whose crop still covers the model's input size:
        Image.draft picks the largest DCT scale that keeps the image at least this big."""
        left, top, right, bottom = self.crop_box(w, h)
        r = MIN_REDUCTION
        return (math.ceil(r * w * self.width / (right - left)), math.ceil(r * h * self.height / (bottom - top)))

    def load(self, path: Path) -> tuple[np.ndarray, int, int]:
        """Decode and crop+resize one image: (HWC uint8 at the model's size, upright width,
        upright height)."""
        with Image.open(path) as im:
            if im.format == "JPEG":
                w, h = im.size
                quarter_turn = im.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
                if quarter_turn:
                    w, h = h, w
                dw, dh = self.draft_size(w, h)
                im.draft("RGB", (dh, dw) if quarter_turn else (dw, dh))  # before decoding
                ImageOps.exif_transpose(im, in_place=True)
            else:
                ImageOps.exif_transpose(im, in_place=True)
                w, h = im.size
            if im.mode != "RGB":
                im = to_rgb(im)
            box = self.crop_box(*im.size)
            im = im.resize((self.width, self.height), Image.Resampling.BILINEAR, box=box)
        return np.asarray(im, dtype=np.uint8), w, h

    def normalise(self, batch: np.ndarray) -> np.ndarray:
        """NHWC uint8 to NCHW float32, (pixel - mean) / std."""
        x = (batch.astype(np.float32) - self.mean) * self.inv_std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def session(self, threads: int) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

    def top_k(self, logits: np.ndarray) -> list[list[dict]]:
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        idx = np.argpartition(-p, TOP_K, axis=1)[:, :TOP_K]
        out = []
        for row, cand in zip(p, idx):
            best = cand[np.argsort(-row[cand])]
            out.append([{"label": self.labels[i], "score": round(float(row[i]), 6)} for i in best])
        return out


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def find_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, hidden entries skipped (as tagfleet)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
    return found


# --- per-process: each worker runs the whole pipeline on whole batches ------------------

_MODEL: Model | None = None
_SESSION: ort.InferenceSession | None = None


def _init_worker(model_dir: str, threads: int) -> None:
    global _MODEL, _SESSION
    _MODEL = Model(Path(model_dir))
    if threads:
        _SESSION = _MODEL.session(threads)


def _tag_batch(paths: list[str]) -> tuple[list[str], int]:
    """JSON lines for `paths`, in order, and how many of them are errors."""
    assert _MODEL is not None and _SESSION is not None
    lines: list[str | None] = [None] * len(paths)
    pixels, meta = [], []
    for k, path in enumerate(paths):
        try:
            hwc, w, h = _MODEL.load(Path(path))
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the folder
            lines[k] = json.dumps({"path": path, "error": f"{type(e).__name__}: {e}"})
            continue
        pixels.append(hwc)
        meta.append((k, path, w, h))
    if pixels:
        x = _MODEL.normalise(np.stack(pixels))
        logits = _SESSION.run([_MODEL.logits], {_MODEL.input_name: x})[0]
        for (k, path, w, h), tags in zip(meta, _MODEL.top_k(logits)):
            lines[k] = json.dumps({"path": path, "width": w, "height": h, "tags": tags})
    return lines, len(paths) - len(pixels)  # type: ignore[return-value]


def per_process_batch(images: int, batch: int, workers: int) -> int:
    """Batch size for per-process: `batch` at most, smaller when the folder is too small to
    give every worker a few batches (with 300 images, 16 workers and batches of 16, three
    workers would do two batches while thirteen sit idle after one). Single-threaded ONNX
    Runtime loses little on smaller batches; idle cores lose a lot."""
    return max(1, min(batch, math.ceil(images / (workers * 4))))


def run_per_process(model_dir: Path, paths: list[str], batch: int, workers: int, out) -> int:
    batches = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    errors = 0
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(str(model_dir), 1)) as pool:
        for lines, failed in pool.imap(_tag_batch, batches):
            errors += failed
            out.write("".join(line + "\n" for line in lines))
    return errors


# --- decode-pool: workers decode, the parent runs one many-threaded session -------------

def _load_one(path: str):
    assert _MODEL is not None
    try:
        hwc, w, h = _MODEL.load(Path(path))
        return path, hwc, w, h, None
    except Exception as e:  # noqa: BLE001
        return path, None, 0, 0, f"{type(e).__name__}: {e}"


def run_decode_pool(model_dir: Path, paths: list[str], batch: int, workers: int, threads: int, out) -> int:
    model = Model(model_dir)
    errors = 0
    ctx = multiprocessing.get_context("fork")
    pending: list[tuple[str, np.ndarray, int, int]] = []

    def flush():
        x = model.normalise(np.stack([p[1] for p in pending]))
        logits = session.run([model.logits], {model.input_name: x})[0]
        for (path, _, w, h), tags in zip(pending, model.top_k(logits)):
            out.write(json.dumps({"path": path, "width": w, "height": h, "tags": tags}) + "\n")
        pending.clear()

    with ctx.Pool(workers, initializer=_init_worker, initargs=(str(model_dir), 0)) as pool:
        session = model.session(threads)  # after the fork: children get no ORT threads
        for path, hwc, w, h, err in pool.imap(_load_one, paths, chunksize=4):
            if err is not None:
                errors += 1
                out.write(json.dumps({"path": path, "error": err}) + "\n")
                continue
            pending.append((path, hwc, w, h))
            if len(pending) == batch:
                flush()
        if pending:
            flush()
    return errors


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Tag a folder of photos with ONNX Runtime and Pillow (the Python baseline).",
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("folder", type=Path, help="folder of photos, walked recursively")
    ap.add_argument("--out", type=Path, required=True, help="JSON-lines file to write, one line per image")
    ap.add_argument("--min-reduction", type=float, default=1.0,
                    help="draft JPEGs so that the crop is at least this many times the model's input "
                         "(default: %(default)s, the usual draft; tagfleet uses 1.5)")
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                    help="folder with model.toml, the ONNX file and labels (default: the repo's efficientnet-lite0)")
    ap.add_argument("--batch", type=int, default=None,
                    help="images per inference, at most (default: model.toml's max_batch)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="processes in the pool (default: os.cpu_count() = %(default)s)")
    ap.add_argument("--structure", choices=["per-process", "decode-pool"], default="per-process",
                    help="see below (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="intra-op threads of the parent's session with --structure decode-pool (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.workers < 1 or args.threads < 1 or (args.batch is not None and args.batch < 1):
        ap.error("--workers, --threads and --batch must be at least 1")
    return args


def main(argv=None) -> int:
    global MIN_REDUCTION
    start = time.perf_counter()
    args = parse_args(argv)
    MIN_REDUCTION = args.min_reduction  # the pool's processes are forked: they inherit it
    model = Model(args.model_dir)
    batch = args.batch or model.max_batch
    paths = [str(p) for p in find_images(args.folder)]
    if not paths:
        raise SystemExit(f"no images in {args.folder}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", buffering=1 << 20) as out:
        if args.structure == "per-process":
            batch = per_process_batch(len(paths), batch, args.workers)
            errors = run_per_process(args.model_dir, paths, batch, args.workers, out)
        else:
            errors = run_decode_pool(args.model_dir, paths, batch, args.workers, args.threads, out)
    wall = time.perf_counter() - start
    print(json.dumps({
        "images": len(paths),
        "seconds": round(wall, 3),
        "images_per_second": round(len(paths) / wall, 2),
        "errors": errors,
        "structure": args.structure,
        "workers": args.workers,
        "batch": batch,
        "min_reduction": args.min_reduction,
    }))
    return 3 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
