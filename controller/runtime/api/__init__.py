"""The admin REST API (FastAPI app factory): health, metrics, status, nodes, decisions, the ledger, the
audit log, the operator's overrides and operations, the burst policy, reconcile-now and what-if jobs.

It reads the store and the last TickReport and writes overrides, which the next tick reads
(docs/architecture.md, one writer per field); it never calls Pulumi or the Kubernetes API itself.
Every `/v1` call needs a named bearer token with a role (controller.runtime.auth); `/healthz`, `/readyz`
and `/metrics` stay open for probes and scrapers. Errors are RFC 9457 problem documents; times are
ISO-8601 UTC.
"""

from controller.runtime.api.app import Server, check_listen, create_app
from controller.runtime.api.context import STALE_TICKS, Context

__all__ = ["STALE_TICKS", "Context", "Server", "check_listen", "create_app"]
