"""A deterministic corpus of real-camera-sized photos, for throughput benchmarks.

    .venv/bin/python scripts/make_corpus.py --photos samples/photos --out .cache/corpus \\
        --count 300 --seed 0

The sample photos are small (at most 1000 px a side). Benchmarking on them would flatter
every pipeline: decode cost grows with the pixel count, and real inputs are phone and
camera photos of several megapixels. Each corpus image is therefore a sample photo,
cropped to a random window of the target aspect ratio and upscaled (bicubic) to a size
drawn from SIZES below: a mix of web/messaging, phone and camera sizes from 1 to 24 MP,
4:3, 3:2, 16:9 and 1:1, landscape and portrait, mean about 6 MP.

What makes the files realistic, and so the decode cost honest:
  * mild per-pixel sensor-like noise (Gaussian, sigma 5 levels per channel), so the
    files are not unrealistically smooth and compress like photos (about 2 bits a
    pixel), not like upscales;
  * JPEG at quality 75..95, mostly 4:2:0 chroma subsampling, about a fifth 4:4:4;
    about a quarter of the JPEGs progressive, a tenth of the others with restart markers;
  * about 15% with an EXIF orientation tag (6, 8 or 3) whose stored pixels are rotated
    so that the *upright* view (after applying the tag) is the intended photo;
  * about 5% PNG and 5% WebP (lossy), kept to 1..4 MP as such files usually are;
  * greyscale sources stay greyscale (single-channel) JPEGs; alpha is flattened onto
    white (camera photos carry none).

The shares are exact quotas (rounded), not coin flips, so small corpora have the mix too.
Everything is drawn from --seed: the same arguments and the same Pillow/numpy give the
same bytes. Files are named neutrally (000000.jpg, ...) and written atomically; a `.ready`
file holding the arguments (and digests of the source photos) is written last, and a
re-run with the same arguments is a no-op. --min-mp/--max-mp clamp each drawn size
(keeping its aspect ratio), e.g. for tiny test corpora.

Prints one summary line: count, total and mean MP, bytes, and the format mix.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Landscape sizes (width, height) with relative weights. Portrait variants are drawn with
# PORTRAIT_SHARE. Weighted mean is about 6 MP (see mean_megapixels()).
SIZES: list[tuple[int, int, float, str]] = [
    # web and messaging apps: resized uploads, screenshots of photos, social media
    (1024, 1024, 5, "1:1 social"),
    (1280, 960, 7, "4:3 web"),
    (1600, 1200, 10, "4:3 messaging"),
    (1920, 1080, 9, "16:9 full HD"),
    (2048, 1536, 8, "4:3 web large"),
    (2560, 1440, 4, "16:9 QHD"),
    # phones and compacts
    (2592, 1944, 6, "4:3 5 MP phone"),
    (3000, 2000, 6, "3:2 6 MP camera"),
    (3264, 2448, 8, "4:3 8 MP phone"),
    (3840, 2160, 4, "16:9 4K frame"),
    (3024, 3024, 2, "1:1 phone square"),
    (4032, 3024, 10, "4:3 12 MP phone"),
    (3888, 2592, 3, "3:2 10 MP camera"),
    # interchangeable-lens cameras
    (4608, 3456, 2, "4:3 16 MP micro four thirds"),
    (5184, 3456, 2, "3:2 18 MP APS-C"),
    (5472, 3648, 1, "3:2 20 MP"),
    (6000, 4000, 1, "3:2 24 MP APS-C"),
]
PORTRAIT_SHARE = 0.35
# PNG and WebP files are kept to sizes in this range (megapixels).
LOSSLESS_MP = (1.0, 4.0)

PNG_SHARE = 0.05
WEBP_SHARE = 0.05
EXIF_SHARE = 0.15  # of all images; all of them JPEGs
PROGRESSIVE_SHARE = 0.25  # of the JPEGs
RESTART_SHARE = 0.1  # of the baseline JPEGs: a restart marker after every MCU row
SUBSAMPLING_444_SHARE = 0.2  # of the colour JPEGs
# EXIF orientations and their weights: 6 (rotate 90 CW to view) is the usual phone
# portrait, 8 the other way, 3 upside down.
ORIENTATIONS = {6: 0.6, 8: 0.25, 3: 0.15}
QUALITY = (75, 95)
NOISE_SIGMA = 5.0
CROP_WINDOW = (0.7, 1.0)  # share of the largest window of the target aspect in the source

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
OUR_NAME = re.compile(r"^\d{6}\.(jpg|png|webp)$")
EXIF_ORIENTATION = 0x0112
# What transpose to apply to the upright image so that the tag turns it back upright
# (the inverse of what ImageOps.exif_transpose applies for that tag).
STORE_TRANSPOSE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class Item:
    """Everything that determines one corpus image."""

    index: int
    source: str  # file name in the photos folder
    fmt: str  # "jpeg", "png" or "webp"
    width: int  # upright size
    height: int
    window: tuple[float, float, float]  # crop of the source: share, x and y position
    orientation: int  # EXIF orientation tag, 1 = none written
    quality: int
    subsampling: str  # "4:2:0" or "4:4:4"
    progressive: bool
    restart_rows: int = 0  # MCU rows between restart markers, 0 = none

    @property
    def name(self) -> str:
        return f"{self.index:06d}.{'jpg' if self.fmt == 'jpeg' else self.fmt}"


def mean_megapixels(sizes=SIZES) -> float:
    total = sum(w for *_, w, _ in sizes)
    return sum(a * b / 1e6 * w for a, b, w, _ in sizes) / total


def source_photos(photos: Path) -> list[Path]:
    found = sorted(
        p for p in photos.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not found:
        raise SystemExit(f"no photos in {photos}")
    return found


def load_source(path: Path) -> Image.Image:
    """A source photo upright, greyscale as "L", everything else as "RGB"."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("L", "I;16", "I", "1"):
            return im.convert("L")
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")


def clamp_size(w: int, h: int, lo_mp: float, hi_mp: float) -> tuple[int, int]:
    """(w, h) scaled, aspect kept, so that w*h lies within [lo_mp, hi_mp] megapixels."""
    mp = w * h / 1e6
    if mp > hi_mp:
        s = math.sqrt(hi_mp / mp)
        w, h = math.floor(w * s), math.floor(h * s)
    elif mp < lo_mp:
        s = math.sqrt(lo_mp / mp)
        w, h = math.ceil(w * s), math.ceil(h * s)
    return max(w, 8), max(h, 8)


def quota(n: int, share: float) -> int:
    return int(math.floor(n * share + 0.5))


def plan(sources: list[Path], count: int, seed: int, min_mp: float, max_mp: float) -> list[Item]:
    """The corpus, image by image: drawn from `seed` only, in a fixed order."""
    rng = np.random.default_rng(seed)
    grey = {p.name for p in sources if load_source(p).mode == "L"}
    colour = [p.name for p in sources if p.name not in grey]
    names = [p.name for p in sources]

    order = rng.permutation(count)
    n_png, n_webp = quota(count, PNG_SHARE), quota(count, WEBP_SHARE)
    fmt = ["jpeg"] * count
    for i in order[:n_png]:
        fmt[i] = "png"
    for i in order[n_png:n_png + n_webp]:
        fmt[i] = "webp"
    jpegs = [i for i in range(count) if fmt[i] == "jpeg"]
    exif = set(rng.permutation(jpegs)[:quota(count, EXIF_SHARE)].tolist()) if jpegs else set()
    progressive = (
        set(rng.permutation(jpegs)[:quota(len(jpegs), PROGRESSIVE_SHARE)].tolist())
        if jpegs else set()
    )

    baseline = [i for i in jpegs if i not in progressive]
    restart = (
        set(rng.permutation(baseline)[:quota(len(baseline), RESTART_SHARE)].tolist())
        if baseline else set()
    )

    weights = np.array([w for *_, w, _ in SIZES], dtype=float)
    lossless = [k for k, (a, b, *_r) in enumerate(SIZES) if LOSSLESS_MP[0] <= a * b / 1e6 <= LOSSLESS_MP[1]]
    orient_tags = list(ORIENTATIONS)
    orient_p = np.array(list(ORIENTATIONS.values()))
    orient_p /= orient_p.sum()

    items = []
    for i in range(count):
        if fmt[i] == "jpeg":
            source = names[rng.integers(len(names))]
            k = rng.choice(len(SIZES), p=weights / weights.sum())
        else:  # PNG/WebP: colour sources (WebP has no greyscale), 1..4 MP
            source = colour[rng.integers(len(colour))] if colour else names[rng.integers(len(names))]
            w = weights[lossless]
            k = lossless[rng.choice(len(lossless), p=w / w.sum())]
        w, h = SIZES[k][:2]
        if w != h and rng.random() < PORTRAIT_SHARE:
            w, h = h, w
        w, h = clamp_size(w, h, min_mp, max_mp)
        share = rng.uniform(*CROP_WINDOW)
        fx, fy = rng.random(), rng.random()
        orientation = 1
        if i in exif:
            orientation = int(orient_tags[rng.choice(len(orient_tags), p=orient_p)])
        items.append(Item(
            index=i,
            source=source,
            fmt=fmt[i],
            width=w,
            height=h,
            window=(share, fx, fy),
            orientation=orientation,
            quality=int(rng.integers(QUALITY[0], QUALITY[1] + 1)),
            subsampling="4:4:4" if source not in grey and rng.random() < SUBSAMPLING_444_SHARE else "4:2:0",
            progressive=i in progressive,
            restart_rows=1 if i in restart else 0,
        ))
    return items


def _crop_box(size: tuple[int, int], window, aspect: float) -> tuple[float, float, float, float]:
    """The source box for `window` (share, x position, y position): `share` of the largest
    rectangle of `aspect` that fits the source, placed at the fractional position."""
    share, fx, fy = window
    sw, sh = size
    if sw / sh > aspect:  # source wider than the target: full height
        ch = sh * share
        cw = ch * aspect
    else:
        cw = sw * share
        ch = cw / aspect
    left = (sw - cw) * fx
    top = (sh - ch) * fy
    return (left, top, left + cw, top + ch)


_SOURCES: dict[str, Image.Image] = {}


def _source(photos: Path, name: str) -> Image.Image:
    if name not in _SOURCES:
        _SOURCES[name] = load_source(photos / name)
    return _SOURCES[name]


def add_noise(im: Image.Image, seed: int, index: int) -> Image.Image:
    """Gaussian noise, sigma NOISE_SIGMA levels per channel, drawn in fixed row chunks."""
    a = np.asarray(im)
    out = np.empty_like(a)
    rng = np.random.default_rng([seed, index, 1])
    rows = 256
    for y in range(0, a.shape[0], rows):
        block = a[y:y + rows]
        noise = rng.standard_normal(block.shape, dtype=np.float32) * NOISE_SIGMA
        np.clip(block + np.rint(noise), 0, 255, out=noise)
        out[y:y + rows] = noise.astype(np.uint8)
    return Image.fromarray(out, mode=im.mode)


def render_upright(item: Item, photos: Path, seed: int) -> Image.Image:
    """The intended photo, as it should be seen: cropped, upscaled, with noise."""
    src = _source(photos, item.source)
    box = _crop_box(src.size, item.window, item.width / item.height)
    im = src.resize((item.width, item.height), Image.Resampling.BICUBIC, box=box)
    return add_noise(im, seed, item.index)


def encode(item: Item, upright: Image.Image) -> bytes:
    buf = io.BytesIO()
    if item.fmt == "png":
        upright.save(buf, "PNG", compress_level=6)
    elif item.fmt == "webp":
        upright.save(buf, "WEBP", quality=item.quality, method=4)
    else:
        stored = upright
        extra = {}
        if item.orientation != 1:
            stored = upright.transpose(STORE_TRANSPOSE[item.orientation])
            exif = Image.Exif()
            exif[EXIF_ORIENTATION] = item.orientation
            extra["exif"] = exif.tobytes()
        stored.save(
            buf, "JPEG",
            quality=item.quality,
            subsampling=item.subsampling,
            progressive=item.progressive,
            restart_marker_rows=item.restart_rows,
            **extra,
        )
    return buf.getvalue()


def _make(job: tuple[Item, str, int, str]) -> tuple[str, int]:
    item, photos, seed, out = job
    data = encode(item, render_upright(item, Path(photos), seed))
    final = Path(out) / item.name
    tmp = final.with_name(f".{item.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, final)
    return item.name, len(data)


def describe(out: Path) -> dict:
    """Reads the corpus headers back: what is actually on disk."""
    stats = dict(count=0, megapixels=0.0, bytes=0, progressive=0, exif_rotated=0, png=0, webp=0)
    for p in sorted(out.iterdir()):
        if not OUR_NAME.match(p.name):
            continue
        with Image.open(p) as im:
            stats["count"] += 1
            stats["megapixels"] += im.width * im.height / 1e6
            stats["bytes"] += p.stat().st_size
            stats["progressive"] += bool(im.info.get("progressive"))
            stats["exif_rotated"] += im.getexif().get(EXIF_ORIENTATION, 1) != 1
            stats["png"] += im.format == "PNG"
            stats["webp"] += im.format == "WEBP"
    return stats


def summary_line(out: Path, stats: dict, note: str = "") -> str:
    n = stats["count"]
    return (
        f"corpus {out}: {n} images, {stats['megapixels']:.1f} MP total, "
        f"mean {stats['megapixels'] / max(n, 1):.2f} MP, {stats['bytes'] / 1e6:.1f} MB; "
        f"progressive {stats['progressive']}, EXIF-rotated {stats['exif_rotated']}, "
        f"PNG {stats['png']}, WebP {stats['webp']}{note}"
    )


def marker(args: argparse.Namespace, sources: list[Path]) -> str:
    return json.dumps({
        "generator": GENERATOR_VERSION,
        "count": args.count,
        "seed": args.seed,
        "min_mp": args.min_mp,
        "max_mp": args.max_mp,
        "sources": {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sources},
    }, sort_keys=True) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Sizes: " + "; ".join(f"{w}x{h} ({d})" for w, h, _, d in SIZES),
    )
    ap.add_argument("--photos", type=Path, default=Path("samples/photos"),
                    help="folder of source photos (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=Path(".cache/corpus"),
                    help="corpus folder, created if missing (default: %(default)s)")
    ap.add_argument("--count", type=int, default=300, help="images to make (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    ap.add_argument("--min-mp", type=float, default=1.0,
                    help="smallest image, megapixels; smaller draws are scaled up (default: %(default)s)")
    ap.add_argument("--max-mp", type=float, default=24.0,
                    help="largest image, megapixels; larger draws are scaled down (default: %(default)s)")
    ap.add_argument("--jobs", type=int, default=2,
                    help="processes generating images (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error("--count must be at least 1")
    if not 0 < args.min_mp <= args.max_mp:
        ap.error("need 0 < --min-mp <= --max-mp")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sources = source_photos(args.photos)
    out: Path = args.out
    ready = out / ".ready"
    want = marker(args, sources)
    if ready.is_file() and ready.read_text() == want:
        print(summary_line(out, describe(out), " (up to date)"))
        return 0

    out.mkdir(parents=True, exist_ok=True)
    ready.unlink(missing_ok=True)
    strangers = [p.name for p in out.iterdir() if not p.name.startswith(".") and not OUR_NAME.match(p.name)]
    if strangers:
        raise SystemExit(f"{out} holds files this script did not make ({strangers[:3]}...): "
                         "choose an empty or corpus folder")
    for p in out.iterdir():  # a previous corpus, or leftovers of an interrupted run
        if OUR_NAME.match(p.name) or (p.name.startswith(".") and p.name.endswith(".tmp")):
            p.unlink()

    items = plan(sources, args.count, args.seed, args.min_mp, args.max_mp)
    jobs = [(item, str(args.photos), args.seed, str(out)) for item in items]
    if args.jobs > 1:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            for _ in pool.imap_unordered(_make, jobs, chunksize=1):
                pass
    else:
        for job in jobs:
            _make(job)

    tmp = out / ".ready.tmp"
    tmp.write_text(want)
    os.replace(tmp, ready)
    print(summary_line(out, describe(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
