"""Pure domain: job spec, architectures, metrics, errors. Imports no torch, SQLAlchemy or FastAPI."""
