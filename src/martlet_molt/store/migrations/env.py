"""Alembic's entry point: run the revisions on the connection the store hands over.

The store always passes its own connection, already in a transaction (see the package's
docstring); Alembic then runs every revision inside it.
"""

from __future__ import annotations

from alembic import context

from martlet_molt.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
