"""Settings from the environment (prefix THRESHER_), built once per entry point."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

_REPO_ROOT = Path(__file__).resolve().parents[1]


def _default_datasets_dir() -> Path:
    # The project's data lives beside the checkout in ../shared (never inside the repository).
    for candidate in (Path.cwd() / ".." / "shared" / "datasets", _REPO_ROOT.parent / "shared" / "datasets"):
        if candidate.is_dir():
            return candidate.resolve()
    return (Path.cwd() / "datasets").resolve()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="THRESHER_", extra="ignore")

    database_url: str = "sqlite:///./var/thresher.db"
    # How long a SQLite writer waits for another's lock; past it, workers retry with backoff and
    # the API answers 503 (PostgreSQL has no such wait).
    sqlite_busy_timeout_seconds: float = 30.0
    datasets_dir: Path = _default_datasets_dir()
    # Local cache of blobs by sha256, so a worker fetches a model or dataset once.
    cache_dir: Path = Path("./var/cache")

    # API limits; each refusal names the limit and how to change it.
    max_upload_bytes: int = 512 * 1024 * 1024  # multipart uploads, enforced while streaming
    max_json_bytes: int = 1024 * 1024  # any other request body
    max_tensors: int = 1024  # tensors (arrays) in one uploaded file
    max_tensor_rank: int = 8
    max_tensor_elements: int = 1 << 31  # elements in one tensor
    max_classes: int = 10_000
    max_graph_nodes: int = 10_000  # nodes in an uploaded torch.export graph (.pt2)
    max_trials: int = 100_000  # per job
    max_active_jobs: int = 8  # queued or running, per principal
    requests_per_minute: int = 600  # per principal (or per client address before authentication)
    cors_origins: list[str] = []  # CORS stays off unless origins are listed
    cookie_secure: bool = True  # browsers treat http://127.0.0.1 and localhost as secure contexts

    # Queue: a claim is a lease renewed by heartbeats; see DESIGN.md §4.
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    poll_seconds: float = 1.0
    max_attempts: int = 3
    retry_backoff_seconds: float = 10.0
    retry_backoff_max_seconds: float = 300.0

    # Worker
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Workers that share a machine's GPUs take one each by a lock in this directory (see
    # workers/runtime/gpu_slots.py); unset, "auto" and "cuda" mean the first GPU.
    gpu_lock_dir: Path | None = None
    # Multi-round methods (olmp) save their training state at most this often (and when draining):
    # a worker killed mid-job costs at most about this much training.
    state_seconds: float = 60.0
    # After SIGTERM a worker finishes its population, stores its trials and state, hands the job
    # back and exits; past this bound (a database outage) it exits anyway. Deployments give
    # workers a longer grace period than this before they kill them.
    drain_seconds: float = 90.0
    worker_name: str | None = None
