"""Tests of benches/compare.py's sorting of a corpus into kinds of file, on a sample photo
encoded each way.

    .venv/bin/python -m unittest discover -s scripts -p 'test_compare.py'
"""

import io
import sys
import tempfile
import unittest
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))
import compare  # noqa: E402

PHOTOS = ROOT / "samples" / "photos"


def photo() -> Image.Image:
    first = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[0]
    with Image.open(first) as im:
        return im.convert("RGB")


class KindOf(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.image = photo()

    def save(self, name: str, data: bytes) -> Path:
        path = Path(self.dir.name) / name
        path.write_bytes(data)
        return path

    def encoded(self, fmt: str, **options) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, fmt, **options)
        return buf.getvalue()

    def test_each_kind_by_its_bytes_not_its_name(self):
        cases = {
            "baseline JPEG": self.encoded("JPEG", quality=85),
            "progressive JPEG": self.encoded("JPEG", quality=85, progressive=True),
            "PNG": self.encoded("PNG"),
            "WebP": self.encoded("WEBP", quality=80),
            "other": self.encoded("GIF"),
        }
        for kind, data in cases.items():
            with self.subTest(kind=kind):
                # The suffix lies on purpose: the bytes decide.
                self.assertEqual(compare.kind_of(self.save(f"{len(data)}.jpg", data)), kind)

    def test_a_frame_header_behind_large_metadata_is_found(self):
        # An ICC profile of 200 KB, split over APP2 segments, puts the frame header far past
        # the first 64 KiB read.
        profile = bytes(range(256)) * 800
        for progressive, kind in ((False, "baseline JPEG"), (True, "progressive JPEG")):
            data = self.encoded("JPEG", quality=85, progressive=progressive, icc_profile=profile)
            sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
            self.assertGreater(sof, 1 << 16)
            with self.subTest(kind=kind):
                self.assertEqual(compare.kind_of(self.save(f"{kind}.jpg", data)), kind)

    def test_cut_short_or_not_an_image(self):
        jpeg = self.encoded("JPEG", quality=85)
        sof = jpeg.find(b"\xff\xc0")
        self.assertEqual(compare.kind_of(self.save("cut.jpg", jpeg[:sof])), "other")
        self.assertEqual(compare.kind_of(self.save("text.jpg", b"not an image at all")), "other")
        self.assertEqual(compare.kind_of(self.save("empty.jpg", b"")), "other")


if __name__ == "__main__":
    unittest.main()
