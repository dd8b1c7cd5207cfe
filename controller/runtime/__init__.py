"""The running controller's parts around the core: the reconcile loop, the store, telemetry, jobs, the admin
API, the orphan audit, and the small shared pieces they speak through (codec, logs, errors, policy files).
"""
