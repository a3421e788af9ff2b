"""Tests of make_corpus.py: a tiny corpus made for real, and its properties read back.

    .venv/bin/python -m unittest discover -s scripts -p 'test_make_corpus.py'
"""

import contextlib
import io
import shutil
import sys
import tempfile
import unittest
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "samples" / "photos"
COUNT, MIN_MP, MAX_MP = 12, 0.05, 0.3


def make(out: Path, seed: int = 0, count: int = COUNT, jobs: int = 2) -> str:
    argv = ["--photos", str(PHOTOS), "--out", str(out), "--count", str(count),
            "--seed", str(seed), "--min-mp", str(MIN_MP), "--max-mp", str(MAX_MP),
            "--jobs", str(jobs)]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = make_corpus.main(argv)
    assert rc == 0, rc
    return buf.getvalue()


def files(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if not p.name.startswith("."))


@unittest.skipUnless(PHOTOS.is_dir(), "no sample photos: run `make photos`")
class TinyCorpus(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="corpus-test-"))
        cls.a = cls.tmp / "a"
        cls.summary = make(cls.a)
        cls.items = make_corpus.plan(
            make_corpus.source_photos(PHOTOS), COUNT, 0, MIN_MP, MAX_MP)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_files_are_named_neutrally_and_nothing_is_left_over(self):
        names = [p.name for p in files(self.a)]
        self.assertEqual(names, [item.name for item in self.items])
        self.assertEqual(len(names), COUNT)
        hidden = sorted(p.name for p in self.a.iterdir() if p.name.startswith("."))
        self.assertEqual(hidden, [".ready"], "temporary files left behind")

    def test_sizes_within_range(self):
        for p, item in zip(files(self.a), self.items):
            with Image.open(p) as im:
                upright = ImageOps.exif_transpose(im)
            w, h = upright.size
            self.assertEqual((w, h), (item.width, item.height), p.name)
            # floor/ceil of the clamp can stray a little past the bound
            self.assertGreaterEqual(w * h / 1e6, MIN_MP * 0.98, p.name)
            self.assertLessEqual(w * h / 1e6, MAX_MP * 1.0001, p.name)

    def test_format_mix_is_present(self):
        formats, modes = Counter(), Counter()
        progressive = rotated = 0
        for p in files(self.a):
            with Image.open(p) as im:
                formats[im.format] += 1
                modes[(im.format, im.mode)] += 1
                progressive += bool(im.info.get("progressive"))
                rotated += im.getexif().get(make_corpus.EXIF_ORIENTATION, 1) in (3, 6, 8)
                self.assertEqual(p.suffix, {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}[im.format])
        self.assertEqual(formats["PNG"], 1, formats)
        self.assertEqual(formats["WEBP"], 1, formats)
        self.assertEqual(formats["JPEG"], COUNT - 2, formats)
        self.assertGreaterEqual(progressive, 1)
        self.assertLess(progressive, formats["JPEG"], "some JPEGs must be baseline")
        self.assertGreaterEqual(rotated, 1)
        self.assertNotIn(("JPEG", "RGBA"), modes)
        # camera.png is greyscale: its images are single-channel JPEGs
        for p, item in zip(files(self.a), self.items):
            if item.source == "camera.png":
                with Image.open(p) as im:
                    self.assertEqual((im.format, im.mode), ("JPEG", "L"), p.name)
        self.assertIn("PNG 1, WebP 1", self.summary)

    def test_jpeg_encoder_settings_follow_the_plan(self):
        for p, item in zip(files(self.a), self.items):
            if item.fmt != "jpeg":
                continue
            with Image.open(p) as im:
                self.assertEqual(bool(im.info.get("progressive")), item.progressive, p.name)
                if im.mode == "RGB":
                    # layer: (id, h sampling, v sampling, table); luma 2x2 means 4:2:0
                    luma = im.layer[0][1:3]
                    self.assertEqual(luma, (2, 2) if item.subsampling == "4:2:0" else (1, 1), p.name)

    def test_exif_rotated_files_decode_upright(self):
        rotated = [(p, item) for p, item in zip(files(self.a), self.items) if item.orientation != 1]
        self.assertTrue(rotated)
        for p, item in rotated:
            with Image.open(p) as im:
                self.assertEqual(im.getexif()[make_corpus.EXIF_ORIENTATION], item.orientation)
                stored = im.size
                upright = ImageOps.exif_transpose(im)
            expected = (item.height, item.width) if item.orientation in (6, 8) else (item.width, item.height)
            self.assertEqual(stored, expected, f"{p.name}: pixels must be stored rotated")
            self.assertEqual(upright.size, (item.width, item.height), p.name)
            # The content, not only the aspect: close to the intended photo (JPEG loss
            # and noise aside), and much closer than the same image turned the other way.
            want = np.asarray(make_corpus.render_upright(item, PHOTOS, 0), dtype=np.float32)
            got = np.asarray(upright.convert(make_corpus.load_source(PHOTOS / item.source).mode),
                             dtype=np.float32)
            err = np.abs(got - want).mean()
            wrong = np.abs(got[::-1, ::-1] - want).mean()  # turned 180 degrees
            self.assertLess(err, 6.0, p.name)
            self.assertLess(err * 3, wrong, f"{p.name}: looks turned the wrong way")

    def test_same_seed_same_bytes_other_seed_other_bytes(self):
        b = self.tmp / "b"
        make(b, jobs=1)  # one process: the result must not depend on scheduling
        self.assertEqual([p.name for p in files(b)], [p.name for p in files(self.a)])
        for pa, pb in zip(files(self.a), files(b)):
            self.assertEqual(pa.read_bytes(), pb.read_bytes(), pa.name)
        c = self.tmp / "c"
        make(c, seed=1)
        differing = sum(pa.read_bytes() != pc.read_bytes() for pa, pc in zip(files(self.a), files(c)))
        self.assertEqual(differing, COUNT)

    def test_rerun_is_a_no_op_and_other_arguments_remake(self):
        d = self.tmp / "d"
        make(d)
        before = {p.name: p.stat().st_mtime_ns for p in files(d)}
        ready = (d / ".ready").read_text()
        out = make(d)
        self.assertIn("up to date", out)
        self.assertEqual({p.name: p.stat().st_mtime_ns for p in files(d)}, before)
        self.assertEqual((d / ".ready").read_text(), ready)
        out = make(d, count=COUNT - 2)
        self.assertNotIn("up to date", out)
        self.assertEqual(len(files(d)), COUNT - 2, "the old corpus's extra files must go")
        self.assertNotEqual((d / ".ready").read_text(), ready)


@unittest.skipUnless(PHOTOS.is_dir(), "no sample photos: run `make photos`")
class FullSizePlan(unittest.TestCase):
    """The default corpus's plan (nothing rendered): the documented mix."""

    def test_default_mix(self):
        items = make_corpus.plan(make_corpus.source_photos(PHOTOS), 300, 0, 1.0, 24.0)
        mp = np.array([i.width * i.height / 1e6 for i in items])
        self.assertTrue(((mp >= 1.0) & (mp <= 24.0)).all())
        self.assertTrue(5.0 <= mp.mean() <= 7.0, mp.mean())
        self.assertGreater(mp.max(), 15.0)
        fmt = Counter(i.fmt for i in items)
        self.assertEqual(fmt, Counter(jpeg=270, png=15, webp=15))
        for i in items:
            if i.fmt != "jpeg":
                self.assertTrue(1.0 <= i.width * i.height / 1e6 <= 4.0, i)
                self.assertEqual(i.orientation, 1)
        self.assertEqual(sum(i.orientation != 1 for i in items), 45)
        self.assertEqual(sum(i.progressive for i in items), round(270 / 4))
        self.assertEqual({i.orientation for i in items}, {1, 3, 6, 8})
        aspects = {round(max(i.width, i.height) / min(i.width, i.height), 2) for i in items}
        self.assertTrue({1.0, 1.33, 1.5, 1.78} <= aspects, aspects)
        self.assertTrue(any(i.width < i.height for i in items), "no portrait images")
        self.assertTrue(any(i.width > i.height for i in items), "no landscape images")
        self.assertTrue(any(i.subsampling == "4:4:4" for i in items))
        self.assertEqual(len({i.source for i in items}), len(make_corpus.source_photos(PHOTOS)))


if __name__ == "__main__":
    unittest.main()
