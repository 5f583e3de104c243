# One image for every Thresher process (migrate, api, worker); the command picks the role.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY core core
COPY store store
COPY service service
COPY workers workers
COPY migrations migrations
COPY cli cli
RUN pip install --no-cache-dir .
EXPOSE 8000
CMD ["thresher", "serve", "--host", "0.0.0.0", "--port", "8000"]
