"""The contract between the controller and the workloads it bursts: what a workload exposes and the
controller reads. Both sides import it; it imports neither."""
