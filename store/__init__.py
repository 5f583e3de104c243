"""SQLAlchemy models, sessions, the queue and the blob store. Never commits on its own: callers own
the transaction."""
