"""The reference face-embedding model: a MobileFaceNet-shaped ONNX graph with deterministic weights.

No trained weights can be downloaded where gpuburst is built and tested, so capacity is measured on a
network with the real architecture and cost: MobileFaceNet (Chen et al. 2018, the 512-d variant of the
insightface model zoo, about 0.45 GFLOP per 112x112 face) with weights drawn from a seeded RNG. Its
embeddings are not trained to tell faces apart; production serves trained weights (e.g. insightface
``w600k_mbf.onnx`` or ``w600k_r50.onnx``) through the same loading path (``--model PATH``).

The graph is built with ``onnx.helper``; batch-norm is folded into the convolutions, as exporters do for
inference. One calibration pass on synthetic images centres and scales the final layer so that cosine
similarities of unrelated inputs spread around zero instead of all sitting near one (a random network's
outputs share one large mean direction). The file is cached under a name derived from the spec, with a
``.sha256`` sidecar that is checked on every load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GENERATOR_VERSION: Final = 1
INPUT_NAME: Final = "input"
OUTPUT_NAME: Final = "embedding"
INPUT_SIZE: Final = 112
PRELU_SLOPE: Final = 0.25

# (expansion t, output channels c, repeats n, first stride s): MobileFaceNet, Table 1 of the paper.
BOTTLENECKS: Final = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


@dataclass(frozen=True)
class ModelSpec:
    """Everything the generated file depends on; its hash names the cached file."""

    seed: int = 20180420
    embedding_dim: int = 512
    width: float = 1.0
    calibration_images: int = 48

    def key(self) -> str:
        payload = json.dumps(
            {"generator": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True
        ).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


@dataclass
class _Graph:
    """Accumulates nodes, weights and the multiply-accumulate count while the network is laid out."""

    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = dataclasses.field(default_factory=list)
    weights: list[onnx.TensorProto] = dataclasses.field(default_factory=list)
    macs: int = 0
    _count: int = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def conv(
        self,
        x: str,
        shape: tuple[int, int, int],
        out_c: int,
        *,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        gain: float = 1.0,
    ) -> tuple[str, tuple[int, int, int]]:
        """Conv (batch-norm folded) and an optional PReLU; returns the output and its C, H, W."""
        in_c, h, w = shape
        pad = kernel // 2 if kernel > 1 and kernel < h else 0
        out_h = (h + 2 * pad - kernel) // stride + 1
        out_w = (w + 2 * pad - kernel) // stride + 1
        fan_in = (in_c // groups) * kernel * kernel
        # He initialisation keeps activations at one scale through the stack; `gain` damps the residual
        # branches so that fifteen additions do not grow it.
        std = gain * np.sqrt(2.0 / ((1 + PRELU_SLOPE**2) * fan_in))
        weight = (self.rng.standard_normal((out_c, in_c // groups, kernel, kernel)) * std).astype(np.float32)
        bias = np.zeros(out_c, dtype=np.float32)
        name = self.name("conv")
        self.weights += [
            numpy_helper.from_array(weight, name + "_w"),
            numpy_helper.from_array(bias, name + "_b"),
        ]
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, name + "_w", name + "_b"],
                [name],
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad] * 4,
                group=groups,
            )
        )
        self.macs += out_c * out_h * out_w * fan_in
        if not act:
            return name, (out_c, out_h, out_w)
        slope = np.full((out_c, 1, 1), PRELU_SLOPE, dtype=np.float32)
        act_name = self.name("prelu")
        self.weights.append(numpy_helper.from_array(slope, act_name + "_slope"))
        self.nodes.append(helper.make_node("PRelu", [name, act_name + "_slope"], [act_name]))
        return act_name, (out_c, out_h, out_w)

    def bottleneck(
        self, x: str, shape: tuple[int, int, int], out_c: int, *, expansion: int, stride: int
    ) -> tuple[str, tuple[int, int, int]]:
        """MobileNetV2 inverted residual: 1x1 expand, 3x3 depthwise, linear 1x1 project (+ shortcut)."""
        hidden = shape[0] * expansion
        residual = stride == 1 and shape[0] == out_c
        y, s = self.conv(x, shape, hidden, kernel=1)
        y, s = self.conv(y, s, hidden, kernel=3, stride=stride, groups=hidden)
        y, s = self.conv(y, s, out_c, kernel=1, act=False, gain=0.5 if residual else 1.0)
        if not residual:
            return y, s
        out = self.name("add")
        self.nodes.append(helper.make_node("Add", [x, y], [out]))
        return out, s


def _scaled(channels: int, width: float) -> int:
    return max(8, round(channels * width / 8) * 8)


def build(spec: ModelSpec) -> tuple[onnx.ModelProto, int]:
    """The uncalibrated graph and its multiply-accumulates per face."""
    g = _Graph(rng=np.random.default_rng(spec.seed))
    c64 = _scaled(64, spec.width)
    x, shape = g.conv(INPUT_NAME, (3, INPUT_SIZE, INPUT_SIZE), c64, kernel=3, stride=2)
    x, shape = g.conv(x, shape, c64, kernel=3, groups=c64)
    for expansion, channels, repeats, stride in BOTTLENECKS:
        for i in range(repeats):
            out_c = _scaled(channels, spec.width)
            x, shape = g.bottleneck(x, shape, out_c, expansion=expansion, stride=stride if i == 0 else 1)
    x, shape = g.conv(x, shape, _scaled(512, spec.width), kernel=1)
    # Global depthwise conv (GDConv): a learned spatial weighting instead of average pooling.
    x, shape = g.conv(x, shape, shape[0], kernel=shape[1], groups=shape[0], act=False)
    flat = g.name("flatten")
    g.nodes.append(helper.make_node("Flatten", [x], [flat], axis=1))
    weight = (g.rng.standard_normal((shape[0], spec.embedding_dim)) / np.sqrt(shape[0])).astype(np.float32)
    g.weights += [
        numpy_helper.from_array(weight, "fc_w"),
        numpy_helper.from_array(np.zeros(spec.embedding_dim, dtype=np.float32), "fc_b"),
    ]
    g.nodes.append(helper.make_node("Gemm", [flat, "fc_w", "fc_b"], ["fc"]))
    g.macs += shape[0] * spec.embedding_dim
    g.nodes.append(helper.make_node("LpNormalization", ["fc"], [OUTPUT_NAME], axis=1, p=2))

    graph = helper.make_graph(
        g.nodes,
        "mobilefacenet_reference",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", spec.embedding_dim])],
        initializer=g.weights,
    )
    model = helper.make_model(
        graph,
        producer_name="gpuburst.face_compare",
        producer_version=str(GENERATOR_VERSION),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    # onnxruntime 1.31 reads IR version 10; pin it rather than take whatever the onnx package writes.
    model.ir_version = 10
    helper.set_model_props(
        model,
        {
            "gpuburst.reference": "true",
            "gpuburst.spec": json.dumps(dataclasses.asdict(spec), sort_keys=True),
            "gpuburst.macs_per_face": str(g.macs),
            "gpuburst.note": "deterministic untrained weights: for capacity measurement, not recognition",
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model, g.macs


def calibration_images(count: int, seed: int) -> np.ndarray:
    """Smooth synthetic images in model input scale, shape (count, 3, 112, 112)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1.0, 1.0, size=(count, 3, 7, 7)).astype(np.float32)
    # Nearest upsampling of a 7x7 field plus fine noise: low- and high-frequency content, like a photo.
    images = np.repeat(np.repeat(coarse, 16, axis=2), 16, axis=3)
    images += rng.normal(0.0, 0.2, size=images.shape).astype(np.float32)
    return np.clip(images, -1.0, 1.0)


def _calibrate(model: onnx.ModelProto, spec: ModelSpec) -> onnx.ModelProto:
    """Centre and scale the final layer on synthetic inputs (see the module docstring)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(
        helper.make_tensor_value_info("fc", TensorProto.FLOAT, ["N", spec.embedding_dim])
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one thread: one summation order
    options.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    images = calibration_images(spec.calibration_images, spec.seed + 1)
    fc = np.concatenate(
        [session.run(["fc"], {INPUT_NAME: images[i : i + 8]})[0] for i in range(0, len(images), 8)]
    )
    # Rounded to float16 precision so that last-bit differences between CPUs do not change the file.
    mean = fc.mean(axis=0).astype(np.float16).astype(np.float64)
    std = (fc.std(axis=0) + 1e-6).astype(np.float16).astype(np.float64)
    init = {t.name: t for t in model.graph.initializer}
    weight = numpy_helper.to_array(init["fc_w"]).astype(np.float64)
    init["fc_w"].CopyFrom(numpy_helper.from_array((weight / std).astype(np.float32), "fc_w"))
    init["fc_b"].CopyFrom(numpy_helper.from_array((-mean / std).astype(np.float32), "fc_b"))
    return model


def generate(spec: ModelSpec = ModelSpec()) -> tuple[bytes, int]:
    """The serialized reference model and its multiply-accumulates per face."""
    model, macs = build(spec)
    return _calibrate(model, spec).SerializeToString(), macs


def macs_per_face(path: Path) -> int | None:
    """The counted multiply-accumulates per face of a reference model file; None for other models."""
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    value = props.get("gpuburst.macs_per_face")
    return int(value) if value else None


def default_cache_dir() -> Path:
    env = os.environ.get("GPUBURST_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpuburst"


def cached_path(spec: ModelSpec = ModelSpec(), cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "models" / f"face-compare-reference-{spec.key()}.onnx"


def write(path: Path, spec: ModelSpec = ModelSpec()) -> Path:
    """Generate the model into ``path`` (atomically) with its ``.sha256`` sidecar."""
    data, _ = generate(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data)
    _atomic_write(_sidecar(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    return path


def ensure(path: Path | None = None, spec: ModelSpec = ModelSpec()) -> Path:
    """The reference model at ``path`` (or in the cache), generated once and verified on every call.

    Concurrent workers starting together each write a temporary file and rename it into place; the
    contents are identical, so whichever rename lands last is as good as the first.
    """
    target = path or cached_path(spec)
    if target.exists() and _sidecar(target).exists() and verify(target):
        return target
    return write(target, spec)


def verify(path: Path) -> bool:
    """Whether the file still has the content its sidecar recorded (a torn or edited file does not)."""
    recorded = _sidecar(path).read_text(encoding="utf-8").split()[0]
    return hashlib.sha256(path.read_bytes()).hexdigest() == recorded


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
