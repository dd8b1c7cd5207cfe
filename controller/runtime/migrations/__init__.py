"""Alembic migrations of the PostgreSQL store (`controller.runtime.store_sql` runs them at start)."""
