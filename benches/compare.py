"""A/B: `tagfleet run` against the plain Python baseline, on the same corpus.

    .venv/bin/python benches/compare.py --tagfleet target/release/tagfleet \\
        --corpus .cache/corpus --rounds 2 --batch 16

Both tag every image of --corpus end to end, from files on disk to one result line per
image, with the same model file, the same preprocessing and the same batch size:

  A  tagfleet run CORPUS --out TMP/results --format none --log warn --max-batch BATCH
                         --key-file TMP/bench.key
  B  python benches/python_baseline.py CORPUS --out TMP/baseline.jsonl --batch BATCH

They run alternately, A B A B (--rounds pairs), so drift on the machine (thermal, other
load) hits both alike, each in a fresh temporary folder. Each run is timed over the
child's whole wall time, interpreter or binary start-up, model load and pool start
included, as a user would see it. The corpus is read once before the first run so
neither side pays for a cold page cache. Each side uses every core by default.

Per run it prints images/s and CPU seconds (user+system of the child and its children,
from os.wait4); for `tagfleet run` also its peak RSS (ru_maxrss: one process, so this is
its real peak; the baseline is many processes, for which ru_maxrss would only give the
largest one, so none is shown). Then the ratio of rates, per pair and overall (mean
tagfleet rate / mean baseline rate).

A run fails loudly (exit 1, with the child's stderr) when it exits non-zero or does not
produce exactly one result line per image: tagfleet's JSON-lines files under its --out
folder, the baseline's --out file; lines are counted, not parsed.

--by-kind then runs one more A B pair per kind of file in the corpus (baseline JPEG,
progressive JPEG, PNG, WebP, other), each on a folder of links to that kind's files, and
prints each side's CPU per image of that kind, net of a run on one image (start-up, model
load and pool start), with their ratio and the kind's share of each side's CPU: where the
overall ratio comes from.

--tagfleet may be any command that takes tagfleet's arguments (split like a shell
would when it is not an existing file), e.g. a stand-in script when no release binary
is built. Extra arguments: --tagfleet-arg=--devices=cpu, --baseline-arg=--structure=decode-pool.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = Path(__file__).resolve().parent / "python_baseline.py"
sys.path.insert(0, str(BASELINE.parent))
from python_baseline import find_images  # noqa: E402  (the same file selection as tagfleet)


@dataclass
class Run:
    side: str  # "tagfleet" or "python"
    round: int
    seconds: float
    images: int
    cpu_seconds: float
    peak_rss: int  # bytes
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.images / self.seconds


class RunFailed(SystemExit):
    pass


def timed(cmd: list[str], workdir: Path) -> tuple[float, int, resource.struct_rusage, Path]:
    """Runs `cmd` with stdout/stderr to files in `workdir`: (wall seconds, exit code,
    rusage, stderr path)."""
    out, err = workdir / "stdout", workdir / "stderr"
    with open(out, "wb") as o, open(err, "wb") as e:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here; keep Popen from waiting again
    return wall, code, usage, err


def tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


def count_lines(paths) -> tuple[int, int]:
    """(lines, lines mentioning an error) over `paths`, blank lines ignored."""
    lines = errors = 0
    for p in paths:
        with open(p, "rb") as f:
            for line in f:
                if line.strip():
                    lines += 1
                    errors += b'"error"' in line
    return lines, errors


def check(side: str, cmd: list[str], code: int, lines: int, errors: int, images: int, stderr: Path) -> None:
    problem = None
    if code != 0:
        problem = f"exited with {code}"
    elif lines != images:
        problem = f"wrote {lines} result lines for {images} images"
    elif errors:
        problem = f"{errors} of its result lines are errors"
    if problem:
        raise RunFailed(
            f"\nFAILED: {side} {problem}\n  command: {shlex.join(cmd)}\n"
            f"--- stderr (tail) ---\n{tail(stderr)}\n---------------------"
        )


def run_tagfleet(args, images: int, rnd: int, work: Path) -> Run:
    cmd = [*args.tagfleet, "run", str(args.corpus),
           "--out", str(work / "results"), "--format", "none", "--log", "warn",
           "--max-batch", str(args.batch), "--key-file", str(work / "bench.key"),
           *args.tagfleet_arg]
    wall, code, usage, err = timed(cmd, work)
    results = sorted((work / "results").rglob("*.jsonl")) if (work / "results").is_dir() else []
    lines, errors = count_lines(results)
    check("tagfleet run", cmd, code, lines, errors, images, err)
    return Run("tagfleet", rnd, wall, images, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)


def run_python(args, images: int, rnd: int, work: Path) -> Run:
    out = work / "baseline.jsonl"
    cmd = [args.python, str(BASELINE), str(args.corpus), "--out", str(out),
           "--batch", str(args.batch), *args.baseline_arg]
    wall, code, usage, err = timed(cmd, work)
    lines, errors = count_lines([out] if out.exists() else [])
    check("python baseline", cmd, code, lines, errors, images, err)
    extra = {}
    try:  # the baseline's own summary line: its structure and in-process timing
        extra = json.loads((work / "stdout").read_text().strip().splitlines()[-1])
    except (ValueError, IndexError):
        pass
    return Run("python", rnd, wall, images, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, extra)


KINDS = ("baseline JPEG", "progressive JPEG", "PNG", "WebP", "other")


def kind_of(path: Path) -> str:
    """What decoding `path` is like: a JPEG by its frame marker (SOF0/SOF1 baseline,
    SOF2 progressive), PNG and WebP by their signatures, anything else "other"."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if not head.startswith(b"\xff\xd8"):
        return "other"
    if len(head) == 1 << 16:  # metadata can push the frame header past the first read
        with open(path, "rb") as f:
            head = f.read()
    at = 2
    while at + 4 <= len(head) and head[at] == 0xFF:
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xC0, 0xC1):
            return "baseline JPEG"
        if marker == 0xC2:
            return "progressive JPEG"
        if 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return "other"  # lossless, hierarchical, arithmetic-coded
        at += 2 + int.from_bytes(head[at + 2:at + 4], "big")
    return "other"


def link_folder(paths: list[Path], parent: Path, name: str) -> Path:
    """A folder under `parent` holding `paths` as hard links (copies across devices)."""
    folder = parent / name
    folder.mkdir()
    for i, p in enumerate(paths):
        target = folder / f"{i:06d}{p.suffix.lower()}"
        try:
            os.link(p, target)
        except OSError:
            shutil.copyfile(p, target)
    return folder


def by_kind(args, paths: list[Path], say) -> list[dict]:
    """One A B pair per kind of file: each side's CPU per image of that kind, net of a
    one-image run, and the kind's share of each side's CPU."""
    kinds: dict[str, list[Path]] = {}
    for p in paths:
        kinds.setdefault(kind_of(p), []).append(p)
    root = Path(tempfile.mkdtemp(prefix="compare-kinds-", dir=args.work_dir))
    try:
        def cpu(corpus: Path, count: int, label: str) -> dict[str, float]:
            sub = argparse.Namespace(**{**vars(args), "corpus": corpus})
            out = {}
            for side, fn in (("tagfleet", run_tagfleet), ("python", run_python)):
                work = Path(tempfile.mkdtemp(prefix=f"{label}-{side}-", dir=root))
                out[side] = fn(sub, count, 1, work).cpu_seconds
            return out

        smallest = min(paths, key=lambda p: p.stat().st_size)
        fixed = cpu(link_folder([smallest], root, "one"), 1, "one")
        say()
        say(f"by kind (one A B pair each; CPU net of a one-image run: tagfleet "
            f"{fixed['tagfleet']:.2f} s, python {fixed['python']:.2f} s)")
        say(f"{'kind':<18}{'images':>7}{'tagfleet ms':>13}{'python ms':>11}{'ratio':>7}"
            f"{'share tf':>10}{'share py':>10}")
        rows = []
        for i, kind in enumerate(k for k in KINDS if k in kinds):
            files = kinds[kind]
            spent = cpu(link_folder(files, root, f"kind{i}"), len(files), f"kind{i}")
            net = {s: max(spent[s] - fixed[s], 0.0) for s in spent}
            rows.append({"kind": kind, "images": len(files),
                         "tagfleet_cpu_seconds": round(net["tagfleet"], 3),
                         "python_cpu_seconds": round(net["python"], 3)})
        total = {s: sum(r[f"{s}_cpu_seconds"] for r in rows) or 1.0 for s in ("tagfleet", "python")}
        for r in rows:
            tf_ms = r["tagfleet_cpu_seconds"] / r["images"] * 1e3
            py_ms = r["python_cpu_seconds"] / r["images"] * 1e3
            ratio = f"{py_ms / tf_ms:6.2f}x" if tf_ms > 0 else "     -"
            say(f"{r['kind']:<18}{r['images']:>7}{tf_ms:>13.1f}{py_ms:>11.1f}{ratio:>7}"
                f"{r['tagfleet_cpu_seconds'] / total['tagfleet']:>10.0%}"
                f"{r['python_cpu_seconds'] / total['python']:>10.0%}")
        say("(ratio: python's CPU per image / tagfleet's, the speed-up on that kind where both "
            "use every core)")
        return rows
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def warm_page_cache(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    return total


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="A/B benchmark: `tagfleet run` against benches/python_baseline.py.",
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--tagfleet", default=str(ROOT / "target" / "release" / "tagfleet"),
                    help="tagfleet binary or stand-in command (default: the release build)")
    ap.add_argument("--corpus", type=Path, default=Path(".cache/corpus"),
                    help="folder of photos, e.g. from scripts/make_corpus.py (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=2, help="A B pairs to run (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=16,
                    help="batch size for both: --max-batch and --batch (default: %(default)s)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter for the baseline (default: this one, %(default)s)")
    ap.add_argument("--tagfleet-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for tagfleet run (repeatable; write --tagfleet-arg=--x=y)")
    ap.add_argument("--baseline-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for the baseline (repeatable; write --baseline-arg=--x=y)")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="where the per-run temporary folders go (default: the system's)")
    ap.add_argument("--keep", action="store_true", help="keep the per-run folders (their paths are printed)")
    ap.add_argument("--by-kind", action="store_true",
                    help="also one A B pair per kind of file (baseline/progressive JPEG, PNG, WebP)")
    ap.add_argument("--json", action="store_true",
                    help="print one summary JSON line on stdout (the report goes to stderr)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.batch < 1:
        ap.error("--rounds and --batch must be at least 1")
    if Path(args.tagfleet).is_file():
        args.tagfleet = [str(Path(args.tagfleet).resolve())]
    else:
        args.tagfleet = shlex.split(args.tagfleet)
        if not args.tagfleet:
            ap.error("--tagfleet is empty")
        if os.sep in args.tagfleet[0] and not Path(args.tagfleet[0]).exists():
            ap.error(f"--tagfleet: no {args.tagfleet[0]} (build it: cargo build --release)")
    if not args.corpus.is_dir():
        ap.error(f"--corpus: no folder {args.corpus} (make one: scripts/make_corpus.py)")
    return args


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def main(argv=None) -> int:
    args = parse_args(argv)
    report = sys.stderr if args.json else sys.stdout

    def say(line: str = "") -> None:
        print(line, file=report, flush=True)

    paths = find_images(args.corpus)
    if not paths:
        raise SystemExit(f"no images in {args.corpus}")
    images = len(paths)
    size = warm_page_cache(paths)
    say(f"corpus {args.corpus}: {images} images, {size / 1e6:.1f} MB; batch {args.batch}; "
        f"{os.cpu_count()} cores; {args.rounds} rounds of A (tagfleet run) then B (python baseline)")

    runs: list[Run] = []
    for rnd in range(1, args.rounds + 1):
        for side, fn in (("tagfleet", run_tagfleet), ("python", run_python)):
            work = Path(tempfile.mkdtemp(prefix=f"compare-{side}-{rnd}-", dir=args.work_dir))
            try:
                run = fn(args, images, rnd, work)
            except RunFailed as failed:
                raise RunFailed(f"{failed.code}\n  (its folder is kept: {work})") from None
            runs.append(run)
            label = "tagfleet run   " if side == "tagfleet" else "python baseline"
            mem = f"  peak RSS {mib(run.peak_rss):>9}" if side == "tagfleet" else ""
            say(f"round {rnd}  {label}  {run.rate:8.1f} images/s  {run.seconds:7.2f} s  "
                f"{run.cpu_seconds / images * 1e3:7.1f} ms CPU/image{mem}")
            if args.keep:
                say(f"  kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)

    tf = [r for r in runs if r.side == "tagfleet"]
    py = [r for r in runs if r.side == "python"]
    pairs = [a.rate / b.rate for a, b in zip(tf, py)]
    tf_mean = statistics.fmean(r.rate for r in tf)
    py_mean = statistics.fmean(r.rate for r in py)
    ratio = tf_mean / py_mean
    say()
    say(f"tagfleet run     {tf_mean:8.1f} images/s (mean of {len(tf)})   peak RSS {mib(max(r.peak_rss for r in tf))}")
    say(f"python baseline  {py_mean:8.1f} images/s (mean of {len(py)})")
    say(f"ratio  {ratio:.2f}x  tagfleet run / python baseline "
        f"(pairs: {', '.join(f'{p:.2f}' for p in pairs)})")
    kinds = by_kind(args, paths, say) if args.by_kind else None
    if args.json:
        print(json.dumps({
            "by_kind": kinds,
            "images": images,
            "batch": args.batch,
            "rounds": args.rounds,
            "cores": os.cpu_count(),
            "tagfleet": {
                "images_per_second": [round(r.rate, 2) for r in tf],
                "seconds": [round(r.seconds, 3) for r in tf],
                "cpu_seconds": [round(r.cpu_seconds, 3) for r in tf],
                "peak_rss_bytes": [r.peak_rss for r in tf],
                "mean_images_per_second": round(tf_mean, 2),
            },
            "python": {
                "images_per_second": [round(r.rate, 2) for r in py],
                "seconds": [round(r.seconds, 3) for r in py],
                "cpu_seconds": [round(r.cpu_seconds, 3) for r in py],
                "mean_images_per_second": round(py_mean, 2),
                "structure": py[0].extra.get("structure"),
            },
            "pair_ratios": [round(p, 3) for p in pairs],
            "ratio": round(ratio, 3),
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
