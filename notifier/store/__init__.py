"""Persistence: SQLAlchemy schema, engine set-up, Alembic migrations and the repository."""
