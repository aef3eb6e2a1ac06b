"""Alembic migrations of the bcs-notifier store, shipped inside the installed package."""
