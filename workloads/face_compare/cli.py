"""``python -m workloads.face_compare``: serve, make-model, bench, manifests.

``serve --port P [--model PATH] [--device auto|cpu|cuda]`` is a contract: the controller's local
capacity adapter starts workers exactly so (with GPUBURST_POOL/GPUBURST_PLACEMENT set) and stops them
with SIGTERM. Flags override the ``FACECOMPARE_*`` environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

from pydantic import ValidationError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workloads.face_compare", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service until SIGTERM, then drain and exit 0")
    serve.add_argument("--port", type=int, required=True)
    # All interfaces: in a container the pod IP is what the probes and the Service reach.
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--model", type=Path, help="ONNX model (default: the generated reference model)")
    serve.add_argument("--device", choices=("auto", "cpu", "cuda"))
    serve.add_argument("--tensorrt", action="store_true", default=None, help="try TensorRT before CUDA")
    serve.add_argument("--max-batch-size", type=int)
    serve.add_argument("--max-queue-delay-us", type=int)
    serve.add_argument("--max-queue-size", type=int)
    serve.add_argument("--intra-op-threads", type=int)
    serve.add_argument("--instances", type=int)
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))

    make = sub.add_parser("make-model", help="write the reference ONNX model (and its .sha256) to OUT")
    make.add_argument("out", type=Path)
    make.add_argument("--seed", type=int)

    bench = sub.add_parser("bench", help="measure engine and served throughput, latency and gpu_rps")
    bench.add_argument("--json", dest="json_out", type=Path, required=True, help="write the report here")
    bench.add_argument("--model", type=Path)
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    bench.add_argument("--step-s", type=float, default=6.0, help="seconds per offered-load step")
    bench.add_argument("--slo-ms", type=float, default=500.0)
    bench.add_argument("--max-batch-size", type=int, default=32)
    bench.add_argument("--max-queue-delay-us", type=int, default=5000)
    bench.add_argument("--quick", action="store_true", help="fewer, shorter steps (a smoke run)")

    manifests = sub.add_parser("manifests", help="print the Kubernetes objects of a placement as YAML")
    manifests.add_argument("placement", choices=("private", "burst"))
    manifests.add_argument("--pool")
    manifests.add_argument("--image", required=True)
    manifests.add_argument("--namespace", default="face-compare")
    manifests.add_argument("--replicas", type=int, default=1)
    manifests.add_argument("--with-service", action="store_true", help="also the Namespace and Service")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "make-model":
        return _make_model(args)
    if args.command == "bench":
        from workloads.face_compare import bench

        return bench.main(args)
    return _manifests(args)


def _serve(args: argparse.Namespace) -> int:
    from workloads.face_compare.server import serve
    from workloads.face_compare.settings import Settings

    try:
        settings = Settings.from_env(
            model_path=args.model,
            device=args.device,
            tensorrt=args.tensorrt,
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.max_queue_delay_us,
            max_queue_size=args.max_queue_size,
            intra_op_threads=args.intra_op_threads,
            instances=args.instances,
            log_level=args.log_level,
        )
    except ValidationError as e:
        print(f"face-compare: invalid settings:\n{e}", file=sys.stderr)
        return 2
    return serve(settings, host=args.host, port=args.port)


def _make_model(args: argparse.Namespace) -> int:
    from workloads.face_compare import reference_model

    spec = reference_model.ModelSpec() if args.seed is None else reference_model.ModelSpec(seed=args.seed)
    path = reference_model.write(args.out, spec)
    macs = reference_model.macs_per_face(path)
    summary = {
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().st_size,
        "macs_per_face": macs,
        "gflop_per_face": None if macs is None else round(2 * macs / 1e9, 3),
        "spec": dataclasses.asdict(spec),
    }
    print(json.dumps(summary, indent=2))
    return 0


def _manifests(args: argparse.Namespace) -> int:
    from workloads.face_compare import manifests

    try:
        objects = manifests.render(
            args.placement, pool=args.pool, image=args.image, namespace=args.namespace, replicas=args.replicas
        )
    except ValueError as e:
        print(f"face-compare: {e}", file=sys.stderr)
        return 2
    if args.with_service:
        objects = [
            manifests.render_namespace(namespace=args.namespace),
            manifests.render_service(namespace=args.namespace),
            *objects,
        ]
    sys.stdout.write(manifests.to_yaml(objects))
    return 0
