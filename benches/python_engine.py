"""ONNX Runtime alone, on ready tensors: the ceiling for any pipeline around this model.

    .venv/bin/python benches/python_engine.py --corpus .cache/corpus --batch-sizes 1,8,16,32

Decoding and preprocessing are done first, outside the timing (real corpus images, the
same crop/resize/normalisation as benches/python_baseline.py, which tagfleet also does).
Then, for each batch size, one session (--threads intra-op threads, default all cores;
full graph optimisation; idle intra-op threads spinning, ONNX Runtime's default, unless
--no-spin) is warmed up and run back to back for at least --seconds, cycling through
distinct batches of the real tensors. Per batch size it prints images/s over the wall time and the process
CPU time per image (time.process_time(): all of ONNX Runtime's threads), which shows what
the extra threads cost; a final JSON line carries the same numbers.

Comparing end-to-end numbers with these says how far each pipeline is from the engine's
limit on this machine; comparing CPU ms per image at --threads 1 and at all cores says
what splitting one batch over many threads costs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from python_baseline import DEFAULT_MODEL_DIR, Model, find_images  # noqa: E402


def session(model: Model, threads: int, spin: bool) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(model.path), opts, providers=["CPUExecutionProvider"])


def tensors(model: Model, folder: Path, count: int) -> np.ndarray:
    """NCHW float32 input tensors of the first `count` images of `folder`."""
    paths = find_images(folder)[:count]
    if not paths:
        raise SystemExit(f"no images in {folder}")
    return model.normalise(np.stack([model.load(p)[0] for p in paths]))


def measure(sess: ort.InferenceSession, model: Model, x: np.ndarray, batch: int,
            seconds: float, warmup: float) -> dict:
    """Runs batches of `batch` cut from `x` (wrapping round) for at least `seconds`."""
    n = len(x)
    batches = [np.take(x, np.arange(j * batch, (j + 1) * batch) % n, axis=0)
               for j in range(math.ceil(n / batch))]
    feed = model.input_name
    out = [model.logits]

    end = time.perf_counter() + warmup
    k = 0
    while time.perf_counter() < end or k < 2:
        sess.run(out, {feed: batches[k % len(batches)]})
        k += 1

    images = runs = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while True:
        sess.run(out, {feed: batches[runs % len(batches)]})
        runs += 1
        images += batch
        wall = time.perf_counter() - t0
        if wall >= seconds:
            break
    cpu = time.process_time() - cpu0
    return {
        "batch": batch,
        "runs": runs,
        "images_per_second": round(images / wall, 2),
        "cpu_ms_per_image": round(cpu / images * 1e3, 3),
        "ms_per_batch": round(wall / runs * 1e3, 3),
    }


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="ONNX Runtime throughput on ready tensors made from corpus images.",
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--corpus", type=Path, default=Path(".cache/corpus"),
                    help="folder of photos the tensors are made from (default: %(default)s)")
    ap.add_argument("--images", type=int, default=64,
                    help="distinct images to preprocess (default: %(default)s)")
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                    help="folder with model.toml (default: the repo's efficientnet-lite0)")
    ap.add_argument("--batch-sizes", default="1,8,16,32",
                    help="comma-separated batch sizes (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=3.0,
                    help="timed seconds per batch size, at least (default: %(default)s)")
    ap.add_argument("--warmup", type=float, default=0.5,
                    help="untimed seconds per batch size first (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="intra-op threads (default: os.cpu_count() = %(default)s)")
    ap.add_argument("--no-spin", dest="spin", action="store_false",
                    help="stop idle intra-op threads spinning (ONNX Runtime's default is to spin)")
    args = ap.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        ap.error("--batch-sizes: comma-separated integers, e.g. 1,8,16,32")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        ap.error("--batch-sizes: positive integers")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    model = Model(args.model_dir)
    x = tensors(model, args.corpus, args.images)
    sess = session(model, args.threads, args.spin)
    print(f"engine: {model.path.parent.name}, {len(x)} distinct images, {args.threads} intra-op "
          f"threads, spinning {'on' if args.spin else 'off'}, ORT {ort.__version__}")
    results = []
    for b in args.batch_sizes:
        r = measure(sess, model, x, b, args.seconds, args.warmup)
        results.append(r)
        print(f"batch {b:4d}  {r['images_per_second']:9.1f} images/s  "
              f"{r['cpu_ms_per_image']:8.2f} ms CPU per image  ({r['ms_per_batch']:.1f} ms per batch)",
              flush=True)
    best = max(results, key=lambda r: r["images_per_second"])
    print(json.dumps({
        "threads": args.threads,
        "spin": args.spin,
        "images": len(x),
        "results": results,
        "best_batch": best["batch"],
        "best_images_per_second": best["images_per_second"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
