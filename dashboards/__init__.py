"""Grafana dashboards and Prometheus alert rules as code."""
