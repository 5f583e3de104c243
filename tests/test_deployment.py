"""docker-compose.yml is checked by parsing it (no Docker engine here)."""

from pathlib import Path

import yaml

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_compose_wires_the_services_to_one_database() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", "api", "worker"}
    assert services["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    assert services["migrate"]["command"] == ["thresher", "migrate"]
    assert services["api"]["command"][:2] == ["thresher", "serve"]
    assert services["worker"]["command"] == ["thresher", "worker"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]

    known = {f"THRESHER_{name.upper()}" for name in Settings.model_fields}
    for name in ("migrate", "api", "worker"):
        env = services[name]["environment"]
        assert set(env) <= known, set(env) - known
        assert env["THRESHER_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in env["THRESHER_DATABASE_URL"]
    pg = services["postgres"]["environment"]
    assert f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@" in services["api"]["environment"]["THRESHER_DATABASE_URL"]
