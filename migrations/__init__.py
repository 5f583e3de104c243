"""Alembic migrations; every revision runs on SQLite (batch mode) and PostgreSQL."""
