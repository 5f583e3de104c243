"""The user-side CLI against a live `thresher up` (API + worker) over real HTTP, as real
processes: submit --follow in a pseudo-terminal draws its bar, downloads and exits 0; Ctrl-C
leaves the job running; every exit code; every subcommand's --json; login's file."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch

from tests.e2e.conftest import ROOT
from tests.graph_models import VggStyle, export_bytes

pytestmark = pytest.mark.own_database  # `thresher up` on its own SQLite file


def cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env={**env, "PYTHONPATH": str(ROOT)},
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def in_terminal(args: list[str], env: dict[str, str], cwd: Path, until: str | None = None,
                timeout: float = 300) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdout and stderr; with `until`, send Ctrl-C (SIGINT)
    once that text has appeared. (exit code, everything it printed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args], stdin=slave, stdout=slave,
                            stderr=slave, env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": "160"}, cwd=cwd)
    os.close(slave)
    out, deadline, interrupted = b"", time.monotonic() + timeout, False
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other end has closed (the process has exited)
                chunk = b""
            if not chunk:
                break
            out += chunk
        if until is not None and not interrupted and until.encode() in out:
            proc.send_signal(signal.SIGINT)
            interrupted = True
        if proc.poll() is not None and not ready:
            break
        assert time.monotonic() < deadline, out.decode(errors="replace")[-2000:]
    os.close(master)
    return proc.wait(timeout=60), out.decode(errors="replace")


@pytest.fixture
def user(service: str, tmp_path: Path) -> dict[str, Any]:
    token = (tmp_path / "var" / "admin-token").read_text().strip()
    env = {**os.environ, "THRESHER_URL": service, "THRESHER_TOKEN": token,
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    (tmp_path / "model.pt2").write_bytes(export_bytes(VggStyle()))
    return {"env": env, "cwd": tmp_path, "url": service, "token": token}


def test_submit_follow_draws_progress_downloads_and_exits_0(user: dict[str, Any]) -> None:
    code, printed = in_terminal(["submit", "model.pt2", "--data", "fashion-mnist", "--delta", "0.02",
                                 "--budget", "6", "--follow", "-o", "pruned.safetensors"],
                                user["env"], user["cwd"])
    assert code == 0, printed
    assert "6/6" in printed and "trials" in printed and "succeeded" in printed
    state = safetensors.torch.load_file(str(user["cwd"] / "pruned.safetensors"))
    assert "features.0.weight" in state  # the user's own names


def test_ctrl_c_leaves_the_job_running(user: dict[str, Any]) -> None:
    code, printed = in_terminal(["submit", "model.pt2", "--data", "fashion-mnist", "--delta", "0.02",
                                 "--budget", "5000", "--follow"], user["env"], user["cwd"],
                                until="running")
    assert code == 130, printed
    assert "keeps running" in printed and "thresher jobs cancel" in printed
    jobs = json.loads(cli("jobs", "list", "--json", env=user["env"], cwd=user["cwd"]).stdout)
    job = jobs["items"][0]
    assert job["status"] in ("queued", "running")
    cancelled = cli("jobs", "cancel", job["id"], "--json", env=user["env"], cwd=user["cwd"])
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["id"] == job["id"]
    watched = cli("jobs", "watch", job["id"], "--json", env=user["env"], cwd=user["cwd"])
    assert watched.returncode == 1 and json.loads(watched.stdout)["status"] == "cancelled"


def test_exit_codes_and_messages(user: dict[str, Any]) -> None:
    env, cwd = user["env"], user["cwd"]
    usage = cli("submit", "model.pt2", "--data", "fashion-mnist", env=env, cwd=cwd)
    assert usage.returncode == 2 and "--delta" in usage.stderr
    unreachable = cli("jobs", "list", "--url", "http://127.0.0.1:9", env=env, cwd=cwd)
    assert unreachable.returncode == 3 and "cannot be reached" in unreachable.stderr
    refused = cli("jobs", "list", "--token", "thr_" + "A" * 43, env=env, cwd=cwd)
    assert refused.returncode == 4 and "unknown" in refused.stderr
    bad = cli("submit", "model.pt2", "--data", "fashion-mnist", "--delta", "1.5", env=env, cwd=cwd)
    assert bad.returncode == 5 and "max_accuracy_drop must be in [0, 1)" in bad.stderr
    method = cli("submit", "model.pt2", "--data", "fashion-mnist", "--delta", "0.01", "--method", "nosuch",
                 env=env, cwd=cwd)
    assert method.returncode == 5 and "nosuch" in method.stderr
    missing = cli("jobs", "show", "no-such-job", env=env, cwd=cwd)
    assert missing.returncode == 5 and "404" in missing.stderr


def test_every_subcommand_speaks_json_and_login_remembers(user: dict[str, Any]) -> None:
    env, cwd = user["env"], user["cwd"]
    submitted = cli("submit", "model.pt2", "--data", "fashion-mnist", "--delta", "0.02", "--budget", "3",
                    "--json", env=env, cwd=cwd)
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    done = json.loads(cli("jobs", "watch", job["id"], "--json", env=env, cwd=cwd).stdout)
    assert done["status"] == "succeeded"
    shown = json.loads(cli("jobs", "show", job["id"], "--json", env=env, cwd=cwd).stdout)
    assert shown["id"] == job["id"] and [a["format"] for a in shown["artifacts"]] == ["pruned", "pt2"]
    got = cli("jobs", "download", job["id"], "--format", "pt2", "--json", env=env, cwd=cwd)
    assert got.returncode == 0
    assert Path(cwd / json.loads(got.stdout)["path"]).read_bytes()[:2] == b"PK"
    exported = cli("jobs", "export-optuna", job["id"], "--out", "study.db", "--json", env=env, cwd=cwd)
    assert exported.returncode == 0, exported.stderr
    import optuna

    study = optuna.load_study(study_name=json.loads(exported.stdout)["study"],
                              storage=f"sqlite:///{cwd / 'study.db'}")
    thresher_trials = json.loads(cli("jobs", "show", job["id"], "--json", env=env, cwd=cwd).stdout)
    assert len(study.trials) == thresher_trials["progress"]["trials_done"] == 3
    assert study.user_attrs["thresher_job"] == job["id"]
    assert all(t.user_attrs["stage"] for t in study.trials) and study.best_trial.value is not None
    again = cli("jobs", "export-optuna", job["id"], "--out", "study.db", env=env, cwd=cwd)
    assert again.returncode == 2 and "exists" in again.stderr
    models = json.loads(cli("models", "list", "--json", env=env, cwd=cwd).stdout)
    assert models["total"] == 1 and models["items"][0]["architecture"] == "graph"
    datasets = json.loads(cli("datasets", "list", "--json", env=env, cwd=cwd).stdout)
    assert datasets["items"][0]["source"] == "builtin:fashion-mnist"
    listed = cli("jobs", "list", env=env, cwd=cwd)
    assert job["id"] in listed.stdout and "succeeded" in listed.stdout
    # login writes the file the next commands read when neither flags nor environment say
    plain = {k: v for k, v in env.items() if k not in ("THRESHER_URL", "THRESHER_TOKEN")}
    logged = cli("login", "--url", user["url"], "--token", user["token"], env=plain, cwd=cwd)
    assert logged.returncode == 0, logged.stderr
    saved = Path(plain["XDG_CONFIG_HOME"]) / "thresher" / "client.json"
    assert saved.stat().st_mode & 0o077 == 0
    assert json.loads(cli("jobs", "list", "--json", env=plain, cwd=cwd).stdout)["total"] == 1


def test_the_python_client_example_runs(user: dict[str, Any]) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "client.py")], cwd=user["cwd"],
                         env={**user["env"], "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert "x smaller" in last and "test accuracy" in last
    assert "10/10 trials" in out.stdout
