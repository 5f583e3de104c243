# Two images from one file, chosen with --target (docker-compose.yml builds both):
#   api     `thresher serve`, `migrate` and `token`: no torch, nevergrad or optuna (a few hundred MB)
#   worker  `thresher worker`: the `worker` extra on top (torch from PyPI, with its CUDA libraries)
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Never run as root; the worker's blob cache lives where this user may write.
RUN useradd --create-home --uid 10001 thresher \
    && mkdir -p /var/cache/thresher && chown thresher /var/cache/thresher
COPY pyproject.toml README.md ./
COPY core core
COPY store store
COPY service service
COPY workers workers
COPY migrations migrations
COPY cli cli
COPY thresher thresher

FROM base AS api
RUN pip install .
USER thresher
EXPOSE 8000
CMD ["thresher", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
RUN pip install ".[worker]"
USER thresher
# SIGTERM drains: the current population is stored and the job handed back (THRESHER_DRAIN_SECONDS).
STOPSIGNAL SIGTERM
CMD ["thresher", "worker"]
