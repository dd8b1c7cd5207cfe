"""Test support: real-part fixtures (Prometheus, the Kubernetes emulator, a scripted Pulumi CLI)."""
