"""The contract between the controller and the workloads it bursts: what a workload exposes and the
controller reads, and the log line format both write. Both sides import it; it imports neither."""
