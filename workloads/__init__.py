"""The GPU workloads gpuburst moves between the private cluster and the cloud."""
