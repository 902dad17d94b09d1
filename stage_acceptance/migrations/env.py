"""Alembic environment of the history database (see stage_acceptance.history).

Migrations run on the connection the history opened (``config.attributes["connection"]``);
the revision is kept in the table ``acceptance_schema_version``.
"""

from alembic import context

from stage_acceptance.history import VERSION_TABLE, Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
