"""The face-compare GPU inference service that gpuburst moves between the private cluster and the cloud.

The package root imports nothing heavy: ``manifests`` and ``metrics`` are imported by the controller and
the Pulumi stacks, which do not need onnxruntime or FastAPI.
"""
