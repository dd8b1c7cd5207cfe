"""Alembic's environment: the store hands its open connection in; no alembic.ini, no URL here."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
