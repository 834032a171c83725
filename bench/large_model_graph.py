"""A real ONNX model of any size with external data, written straight to disk: no protobuf ever holds its weights.

    input [batch, 3, S, S] → Conv 3×3 (3 → C, bias) → BatchNormalization → Relu
      → Conv 3×3 (C → C, no bias) → BatchNormalization → Relu → Flatten → [batch, C·S·S]
      → Gemm (transB = 1, [hidden, C·S·S] weight, bias) → BatchNormalization → Relu
      → Gemm (transB = 0, [hidden, classes] weight, bias) → logits [batch, classes]

With the defaults (C = 64, S = 16, hidden = 33,600) the big Gemm's weight alone is 16,384 × 33,600 float32 =
2.2 GB, over protobuf's 2 GiB limit. Weights are seeded normal with standard deviation 1/√fan_in (outputs stay
of order 1); every BatchNorm has random statistics (mean ~ N(0, 0.2), var ~ U(0.5, 2), γ ~ U(0.5, 1.5),
β ~ N(0, 0.2)), so no BatchNorm is an identity. The arrays are generated a block of rows at a time and
appended to `m.onnx.data`; `m.onnx` holds the graph, each tensor of at least 1 KiB an external reference
(location, offset, length) into the data file, smaller ones inline.

    .venv/bin/python -m bench.large_model_graph DIR [--hidden 33600]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper

BLOCK_BYTES = 1 << 26  # rows generated and written at a time
SMALL_TENSOR_BYTES = 1024
MODEL_FILE, DATA_FILE = "m.onnx", "m.onnx.data"


@dataclass(frozen=True)
class Shape:
    """The sizes of the model (see the module docstring)."""

    channels: int = 64
    spatial: int = 16
    hidden: int = 33_600
    classes: int = 10

    @property
    def features(self) -> int:
        return self.channels * self.spatial * self.spatial


@dataclass(frozen=True)
class BuiltModel:
    path: Path
    data_bytes: int
    batchnorm_nodes: int


Generator = Callable[[int, int], NDArray[np.float32]]  # (first row, rows) → those rows of the tensor


class DataWriter:
    """Appends tensors to the data file and returns their TensorProtos: external references, or inline if small."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.offset = 0

    def tensor(self, name: str, shape: tuple[int, ...], rows: Generator) -> TensorProto:
        row_bytes = 4 * math.prod(shape[1:])
        total = row_bytes * shape[0]
        if total < SMALL_TENSOR_BYTES:
            return helper.make_tensor(name, TensorProto.FLOAT, shape, rows(0, shape[0]).tobytes(), raw=True)
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", DATA_FILE), ("offset", str(self.offset)), ("length", str(total))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        for first, count in _blocks(shape[0], row_bytes):
            block = np.ascontiguousarray(rows(first, count), dtype="<f4")
            assert block.shape == (count, *shape[1:]), (name, block.shape)
            block.tofile(self.stream)
        self.offset += total
        return tensor


def _blocks(rows: int, row_bytes: int) -> Iterator[tuple[int, int]]:
    step = max(1, BLOCK_BYTES // max(row_bytes, 1))
    for first in range(0, rows, step):
        yield first, min(step, rows - first)


def _normal(seed: int, shape: tuple[int, ...], std: float) -> Generator:
    """Rows of a seeded N(0, std²) tensor; each block of rows has its own stream (seed, first row)."""

    def rows(first: int, count: int) -> NDArray[np.float32]:
        generator = np.random.default_rng([seed, first])
        block = generator.standard_normal((count, *shape[1:]), dtype=np.float32)
        block *= np.float32(std)
        return block

    return rows


def _vector(values: NDArray[np.float32]) -> Generator:
    return lambda first, count: values[first : first + count]


def _batchnorm(writer: DataWriter, name: str, channels: int, seed: int) -> list[TensorProto]:
    generator = np.random.default_rng(seed)
    statistics = {
        "scale": generator.uniform(0.5, 1.5, channels),
        "bias": generator.normal(0.0, 0.2, channels),
        "mean": generator.normal(0.0, 0.2, channels),
        "var": generator.uniform(0.5, 2.0, channels),
    }
    return [
        writer.tensor(f"{name}.{key}", (channels,), _vector(values.astype(np.float32)))
        for key, values in statistics.items()
    ]


def build(directory: Path, shape: Shape = Shape(), seed: int = 0) -> BuiltModel:
    """Write directory/m.onnx and directory/m.onnx.data (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    c, s, f, h, k = shape.channels, shape.spatial, shape.features, shape.hidden, shape.classes
    with (directory / DATA_FILE).open("wb") as stream:
        writer = DataWriter(stream)
        initializers = [
            writer.tensor("conv1.weight", (c, 3, 3, 3), _normal(seed + 1, (c, 3, 3, 3), 1 / math.sqrt(27))),
            writer.tensor("conv1.bias", (c,), _normal(seed + 2, (c,), 0.1)),
            *_batchnorm(writer, "bn1", c, seed + 3),
            writer.tensor("conv2.weight", (c, c, 3, 3), _normal(seed + 4, (c, c, 3, 3), 1 / math.sqrt(9 * c))),
            *_batchnorm(writer, "bn2", c, seed + 5),
            writer.tensor("fc.weight", (h, f), _normal(seed + 6, (h, f), 1 / math.sqrt(f))),
            writer.tensor("fc.bias", (h,), _normal(seed + 7, (h,), 0.1)),
            *_batchnorm(writer, "bn3", h, seed + 8),
            writer.tensor("head.weight", (h, k), _normal(seed + 9, (h, k), 1 / math.sqrt(h))),
            writer.tensor("head.bias", (k,), _normal(seed + 10, (k,), 0.1)),
        ]
        stream.flush()
        data_bytes = writer.offset

    def bn(name: str, x: str, y: str) -> onnx.NodeProto:
        return helper.make_node(
            "BatchNormalization", [x, f"{name}.scale", f"{name}.bias", f"{name}.mean", f"{name}.var"], [y],
            name=name, epsilon=1e-5,
        )  # fmt: skip

    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        bn("bn1", "c1", "b1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        bn("bn2", "c2", "b2"),
        helper.make_node("Relu", ["b2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["g"], name="fc", transB=1),
        bn("bn3", "g", "b3"),
        helper.make_node("Relu", ["b3"], ["r3"], name="relu3"),
        helper.make_node("Gemm", ["r3", "head.weight", "head.bias"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "large_conv_bn_gemm_bn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, s, s])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", k])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save_model(model, directory / MODEL_FILE)  # the graph alone: every weight is an external reference
    return BuiltModel(directory / MODEL_FILE, data_bytes, batchnorm_nodes=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--hidden", type=int, default=Shape.hidden, help="outputs of the big Gemm (33600: 2.2 GB)")
    args = parser.parse_args()
    built = build(args.directory, Shape(hidden=args.hidden))
    print(f"wrote {built.path} and {DATA_FILE}: {built.data_bytes / 1e9:.2f} GB of external data")


if __name__ == "__main__":
    main()
