"""The API process: FastAPI app, routes, schemas and pages. Never imports torch, nevergrad or optuna."""
