"""Pulumi program: GPU burst pools and the workload objects (Pulumi.yaml main: stacks/)."""
