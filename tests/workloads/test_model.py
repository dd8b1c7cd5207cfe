"""The reference model generator and the onnxruntime engine, with real inference on the CPU."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from workloads.face_compare import reference_model
from workloads.face_compare.engine import Engine, EngineError, gpu_present
from workloads.face_compare.images import ImageLimits, preprocess

LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=1 << 24, min_side=16)


def _tensors(make_face: Callable[..., bytes], seeds: range) -> np.ndarray:
    import base64

    return np.stack([preprocess(base64.b64encode(make_face(s)).decode(), LIMITS) for s in seeds])


def test_reference_model_has_the_mobilefacenet_cost_and_shape(model_path: Path) -> None:
    model = onnx.load(str(model_path))
    onnx.checker.check_model(model, full_check=True)
    macs = reference_model.macs_per_face(model_path)
    assert macs is not None
    # MobileFaceNet: ~0.22 G multiply-accumulates = ~0.45 GFLOP per 112x112 face.
    assert 0.40e9 <= 2 * macs <= 0.50e9
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 3, 112, 112]
    (out,) = model.graph.output
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 512]
    ops = {node.op_type for node in model.graph.node}
    assert {"Conv", "PRelu", "Add", "Gemm", "LpNormalization"} <= ops
    depthwise = [
        n
        for n in model.graph.node
        if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
    ]
    assert len(depthwise) >= 16  # one per bottleneck plus the stem's and the global depthwise conv


def test_generation_is_deterministic(model_path: Path, tmp_path: Path) -> None:
    again = reference_model.write(tmp_path / "again.onnx")
    assert again.read_bytes() == model_path.read_bytes()


def test_a_cached_model_is_verified_and_regenerated_when_damaged(model_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(model_path.read_bytes())
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    (tmp_path / "m.onnx.sha256").write_text(f"{digest}  m.onnx\n")
    assert reference_model.ensure(path) == path and reference_model.verify(path)

    path.write_bytes(model_path.read_bytes()[:1000])  # torn write
    assert not reference_model.verify(path)
    reference_model.ensure(path)
    assert path.read_bytes() == model_path.read_bytes()


def test_the_cache_name_follows_the_spec(tmp_path: Path) -> None:
    a = reference_model.cached_path(reference_model.ModelSpec(), tmp_path)
    b = reference_model.cached_path(reference_model.ModelSpec(seed=1), tmp_path)
    assert a != b and a.parent == b.parent == tmp_path / "models"


def test_same_image_gives_the_same_unit_vector(engine: Engine, make_face: Callable[..., bytes]) -> None:
    x = _tensors(make_face, range(1))
    first, second = engine.embed(x), engine.embed(x)
    assert first.shape == (1, 512)
    np.testing.assert_array_equal(first, second)
    assert np.linalg.norm(first[0]) == pytest.approx(1.0, abs=1e-5)


def test_batched_embeddings_equal_one_by_one(engine: Engine, make_face: Callable[..., bytes]) -> None:
    x = _tensors(make_face, range(8))
    batched = engine.embed(x)
    single = np.concatenate([engine.embed(x[i : i + 1]) for i in range(8)])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_different_faces_are_far_apart_and_the_same_face_close(
    engine: Engine, make_face: Callable[..., bytes]
) -> None:
    """The calibrated final layer spreads unrelated inputs: without it every cosine would be near 1."""
    e = engine.embed(_tensors(make_face, range(12)))
    similarity = e @ e.T
    off_diagonal = similarity[~np.eye(12, dtype=bool)]
    assert off_diagonal.max() < 0.7
    assert abs(off_diagonal.mean()) < 0.3
    np.testing.assert_allclose(np.diag(similarity), 1.0, atol=1e-5)


def test_engine_reports_the_cpu_provider(engine: Engine) -> None:
    assert engine.info.provider == "CPUExecutionProvider"
    assert engine.info.device == "cpu"
    assert (engine.info.input_size, engine.info.embedding_dim, engine.info.fixed_batch) == (112, 512, None)


@pytest.mark.skipif(gpu_present(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_fails_loudly(model_path: Path) -> None:
    with pytest.raises(EngineError, match="cuda"):
        Engine.load(model_path, device="cuda")


@pytest.mark.skipif(gpu_present(), reason="this machine has a GPU")
def test_auto_without_a_gpu_serves_on_the_cpu(model_path: Path) -> None:
    assert Engine.load(model_path, device="auto").info.provider == "CPUExecutionProvider"


def test_a_model_with_a_fixed_batch_of_one_is_run_image_by_image(
    engine: Engine, model_path: Path, tmp_path: Path, make_face: Callable[..., bytes]
) -> None:
    """Some exported ArcFace models pin N to 1; they serve through the same path."""
    model = onnx.load(str(model_path))
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    fixed_engine = Engine.load(fixed, device="cpu")
    assert fixed_engine.info.fixed_batch == 1
    x = _tensors(make_face, range(3))
    np.testing.assert_allclose(fixed_engine.embed(x), engine.embed(x), atol=1e-5)


def test_a_model_of_the_wrong_shape_is_refused_with_the_reason(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "wrong",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 224])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path / "wrong.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineError, match=r"input must be N x 3 x S x S"):
        Engine.load(path, device="cpu")
