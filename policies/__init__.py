"""Burst policies (YAML) and the CrossGuard guardrail pack."""
