"""The deployment files, checked by parsing them (no Docker engine here): docker-compose.yml against
the code's settings and commands, the Dockerfile's targets against the packages and extras."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from cli.main import WORKER_PACKAGES, parser
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")
SETTINGS = {f"THRESHER_{name.upper()}": name for name in Settings.model_fields}


def _resolve(value: str) -> str:
    """Compose's interpolation with an environment that sets only the required variables (${VAR:?…},
    as "required"): each ${VAR:-default} becomes its default."""
    return INTERPOLATION.sub(lambda m: "required" if m.group(2) == "?" else m.group(3) or "", value)


def _seconds(duration: str) -> float:
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts and duration, f"not a compose duration: {duration!r}"
    h, m, s = (float(p) if p else 0.0 for p in parts.groups())
    return h * 3600 + m * 60 + s


def _dockerfile_stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if found := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE):
            current = stages.setdefault(found.group(1), [])
        elif line.strip() and not line.lstrip().startswith("#"):
            current.append(line.strip())
    return stages


def test_compose_has_the_four_services_and_their_commands_are_real_cli_commands() -> None:
    assert set(SERVICES) == {"postgres", "migrate", "api", "worker"}
    assert SERVICES["migrate"]["command"] == ["thresher", "migrate"]
    assert SERVICES["api"]["command"][:2] == ["thresher", "serve"]
    assert SERVICES["worker"]["command"] == ["thresher", "worker"]
    for name in ("migrate", "api", "worker"):
        command = SERVICES[name]["command"]
        assert command[0] == "thresher"
        parser().parse_args(command[1:])  # exits (fails the test) on an unknown command or option


def test_postgres_keeps_its_data_in_a_volume_and_reports_health() -> None:
    pg = SERVICES["postgres"]
    assert pg["image"].startswith("postgres:")
    volume = next(v.split(":")[0] for v in pg["volumes"] if v.endswith(":/var/lib/postgresql/data"))
    assert volume in COMPOSE["volumes"]  # a named volume: the data outlives the container
    test = pg["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and "pg_isready" in test[1]
    assert f"-U {pg['environment']['POSTGRES_USER']}" in test[1]
    assert "${POSTGRES_PASSWORD:?" in pg["environment"]["POSTGRES_PASSWORD"]  # no default password


def test_migrate_runs_once_after_postgres_is_healthy_and_gates_api_and_workers() -> None:
    migrate = SERVICES["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"
    for name in ("api", "worker"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_api_healthcheck_asks_the_port_the_api_serves() -> None:
    api = SERVICES["api"]
    args = parser().parse_args(api["command"][1:])
    assert args.host == "0.0.0.0"
    assert any(_resolve(p).endswith(f":{args.port}") for p in api["ports"])
    test = api["healthcheck"]["test"]
    assert test[0] == "CMD" and f"http://127.0.0.1:{args.port}/healthz" in " ".join(test)
    assert _seconds(api["healthcheck"]["timeout"]) > 0 and api["healthcheck"]["retries"] >= 1


def test_workers_scale_reserve_gpus_and_drain_within_the_grace_period() -> None:
    worker = SERVICES["worker"]
    # `--scale worker=N` needs replicas that differ: no fixed name, no fixed host port
    assert "container_name" not in worker and "ports" not in worker
    assert "replicas" not in worker.get("deploy", {})  # N comes from --scale
    (gpu,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    # Compose gives every replica of a one-GPU reservation the same GPU: replicas see them all
    # and take one each by a lock in a volume they share (workers/runtime/gpu_slots.py).
    assert gpu["count"] == "all"
    lock_dir = worker["environment"]["THRESHER_GPU_LOCK_DIR"]
    volume = next(v.split(":")[0] for v in worker["volumes"] if v.split(":")[1] == lock_dir)
    assert volume in COMPOSE["volumes"]

    assert worker["stop_signal"] in ("SIGTERM", "SIGINT")  # the signals a worker drains on
    drain = float(_resolve(worker["environment"].get("THRESHER_DRAIN_SECONDS", "")) or
                  Settings.model_fields["drain_seconds"].default)
    assert _seconds(worker["stop_grace_period"]) > drain  # Docker's SIGKILL never cuts a drain


def test_every_thresher_variable_is_a_setting_and_every_default_is_the_code_s(
        monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    named = {m.group(1) for m in INTERPOLATION.finditer(text)} | {
        k for s in SERVICES.values() for k in s.get("environment", {})}
    thresher = {n for n in named if n.startswith("THRESHER_")}
    assert thresher <= set(SETTINGS), thresher - set(SETTINGS)
    for service in SERVICES.values():
        for key, value in service.get("environment", {}).items():
            if not key.startswith("THRESHER_") or not (m := INTERPOLATION.fullmatch(value)):
                continue
            # ${THRESHER_X:-default} passes an operator's setting through, else the code's default
            assert m.group(1) == key and m.group(2) == "-", f"{key} takes its value from {value}"
            monkeypatch.setenv(key, m.group(3))
            field = SETTINGS[key]
            assert getattr(Settings(), field) == Settings.model_fields[field].default, key
            monkeypatch.delenv(key)


def test_every_process_uses_the_compose_database() -> None:
    pg = SERVICES["postgres"]["environment"]
    urls = {_resolve(SERVICES[n]["environment"]["THRESHER_DATABASE_URL"]) for n in ("migrate", "api", "worker")}
    (url,) = urls  # one database for all
    parsed = make_url(url)
    assert parsed.drivername == "postgresql+psycopg"
    assert (parsed.host, parsed.port) == ("postgres", 5432)
    assert (parsed.username, parsed.database) == (pg["POSTGRES_USER"], pg["POSTGRES_DB"])
    raw = SERVICES["api"]["environment"]["THRESHER_DATABASE_URL"]
    assert "${POSTGRES_PASSWORD" in raw.split("@")[0]  # the same password the server is given


def test_the_dockerfile_builds_an_api_image_without_torch_and_a_worker_image_with_it() -> None:
    stages = _dockerfile_stages()
    for name in ("migrate", "api", "worker"):
        assert SERVICES[name]["build"]["target"] in stages
    assert SERVICES["migrate"]["build"]["target"] == SERVICES["api"]["build"]["target"] == "api"
    assert SERVICES["worker"]["build"]["target"] == "worker"

    def installs(stage: str) -> list[str]:
        return [w for line in stages[stage] if line.startswith("RUN pip install")
                for w in shlex.split(line)[3:]]

    assert installs("api") == ["."]
    assert installs("worker") == [".[worker]"]
    assert stages["worker"][-1] == 'CMD ["thresher", "worker"]'
    assert any(line.startswith("USER ") and "root" not in line for line in stages["api"])
    assert any(line.startswith("USER ") and "root" not in line for line in stages["worker"])

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[=<>\[]", d)[0] for d in project["dependencies"]}
    extra = {re.split(r"[=<>\[]", d)[0] for d in project["optional-dependencies"]["worker"]}
    assert not base & set(WORKER_PACKAGES) and set(WORKER_PACKAGES) <= extra
    assert '".[worker,dev]"' in (ROOT / "Makefile").read_text()  # make test installs everything

    # every package the project installs is copied into the image
    copied = {line.split()[1] for line in stages["base"] if line.startswith("COPY ")}
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in include} <= copied


def test_a_worker_without_the_worker_extra_says_what_to_install() -> None:
    # An API-only install: the worker packages cannot be imported (None in sys.modules blocks them).
    code = ("import sys\n"
            f"for name in {WORKER_PACKAGES!r}: sys.modules[name] = None\n"
            "from cli.main import main\n"
            "sys.exit(main(['worker']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "`thresher worker` needs torch, nevergrad, optuna" in out.stderr
    assert "pip install 'thresher[worker]'" in out.stderr and "Traceback" not in out.stderr
