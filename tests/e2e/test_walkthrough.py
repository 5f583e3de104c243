"""The README walkthrough over real HTTP: train a reference with the zoo, upload it, submit a job,
watch it, download the result and check it in a plain torch model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from core import builtin_datasets
from core.architectures import get_architecture
from tests.e2e.conftest import ROOT, _env
from workers.models import zoo
from workers.models.masking import MagnitudePruner
from workers.runtime.evaluation import accuracy

pytestmark = pytest.mark.slow


def _thresher(*args: str, env: dict[str, str], cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "cli.main", *args], env={**env, "PYTHONPATH": str(ROOT)},
                         cwd=cwd, capture_output=True, text=True, timeout=3000)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def reference_300_100(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("zoo")
    out = tmp / "lenet-300-100.safetensors"
    printed = _thresher("zoo", "train", "lenet-300-100", "--dataset", "mnist", "--out", str(out),
                        env=_env(tmp, mnist_dir), cwd=tmp)
    test_acc = float(printed.rsplit("test accuracy", 1)[1].strip())
    assert test_acc >= 0.980, printed
    return out


def test_readme_walkthrough_lenet_300_100(service: str, reference_300_100: Path, mnist_dir: Path,
                                         tmp_path: Path) -> None:
    # `thresher up` created the admin token on its first start and kept it in ./var/admin-token
    token = (tmp_path / "var" / "admin-token").read_text().strip()
    assert httpx.get(f"{service}/v1/jobs").status_code == 401
    http = httpx.Client(base_url=service, timeout=60, headers={"Authorization": f"Bearer {token}"})
    with reference_300_100.open("rb") as f:
        model = http.post("/v1/models", data={"architecture": "lenet-300-100"},
                          files={"weights": ("ref.safetensors", f)}).json()
    assert model["total_parameters"] == 266_610
    dataset = http.post("/v1/datasets", json={"builtin": "mnist"}).json()
    job = http.post("/v1/jobs", json={
        "model_id": model["id"], "dataset_id": dataset["id"], "method": "magnitude",
        "optimizer": "nevergrad:NGOpt", "max_accuracy_drop": 0.005, "budget": {"trials": 300}, "seed": 0,
    }).json()
    assert job["status"] == "queued"

    seen_running = False
    deadline = time.monotonic() + 900
    while True:
        state = http.get(f"/v1/jobs/{job['id']}").json()
        seen_running |= state["status"] == "running"
        if state["status"] in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    assert state["status"] == "succeeded", state["error"]
    assert seen_running and state["progress"]["trials_done"] == 300
    assert "succeeded" in http.get("/", cookies={"thresher_session": token}).text

    r = http.get(f"/v1/jobs/{job['id']}/checkpoint")
    assert r.status_code == 200
    path = reference_300_100.parent / "pruned.safetensors"
    path.write_bytes(r.content)
    with safe_open(str(path), "pt") as f:
        manifest = json.loads(f.metadata()["thresher"])
    state_dict = safetensors.torch.load_file(str(path))

    # a plain LeNet-300-100, not ours, scored on the MNIST test set
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 300), torch.nn.ReLU(),
                              torch.nn.Linear(300, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10)).eval()
    net.load_state_dict({f"{i}.{p}": state_dict[f"fc{k}.{p}"] for k, i in ((1, 1), (2, 3), (3, 5))
                         for p in ("weight", "bias")})
    data = builtin_datasets.load("mnist", mnist_dir)
    with torch.no_grad():
        predictions = net(torch.from_numpy(data.x_test)).argmax(1).numpy()
    test_acc = float(np.mean(predictions == data.y_test))
    assert abs(test_acc - state["test_accuracy"]) <= 1e-4
    assert sum(int(torch.count_nonzero(t)) for t in state_dict.values()) == state["best"]["nonzero"]
    assert manifest["nonzero"] == state["best"]["nonzero"]
    assert state["best"]["accuracy_drop"] <= 0.005

    # the per-layer search beats the best single keep ratio tuned to the same δ
    arch = get_architecture("lenet-300-100")
    params = safetensors.torch.load_file(str(reference_300_100))
    from core.splits import validation_indices

    _, val_idx = validation_indices(60_000, 0.1, 0)
    xv, yv = torch.from_numpy(data.x_train[val_idx]), torch.from_numpy(data.y_train[val_idx])
    model = zoo.build(arch).eval()
    ref = accuracy(model, params, xv, yv)
    assert ref == pytest.approx(state["reference"]["val_accuracy"])
    pruner = MagnitudePruner(arch, params, prune_biases=False)
    uniform_best = min(
        (p.nonzero for g in np.linspace(-4, 0, 200)
         if ref - accuracy(model, (p := pruner.apply([10.0 ** g] * 3)).params, xv, yv) <= 0.005),
    )
    assert state["best"]["nonzero"] < uniform_best


def test_zoo_trains_lenet_5_to_99_percent(tmp_path: Path, mnist_dir: Path) -> None:
    out = tmp_path / "lenet-5.safetensors"
    printed = _thresher("zoo", "train", "lenet-5", "--out", str(out), env=_env(tmp_path, mnist_dir),
                        cwd=tmp_path)
    assert float(printed.rsplit("test accuracy", 1)[1].strip()) >= 0.990, printed
    params = safetensors.torch.load_file(str(out))
    assert sum(t.numel() for t in params.values()) == 431_080


def _readme_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [b.split("\n", 1)[1] for b in body.split("```")[1::2]]


def test_readme_bring_your_own_model_as_pasted(service: str, tmp_path: Path) -> None:
    """The README's three blocks, run as they are: export in Python, upload / submit / download
    with curl over real HTTP, load in Python."""
    export, shell, load = _readme_blocks("Bring your own model: a torch.export archive")
    token = (tmp_path / "var" / "admin-token").read_text().strip()
    env = {**os.environ, "TOKEN": token}
    (tmp_path / "byom.py").write_text(export)
    subprocess.run([sys.executable, "byom.py"], cwd=tmp_path, check=True, timeout=300)
    submit, download = shell.split("# … once it has succeeded:\n")
    port = service.rsplit(":", 1)[1]
    submit, download = (part.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for part in (submit, download))
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", submit + '\necho "$JOB"'], cwd=tmp_path,
                         env=env, check=True, capture_output=True, text=True, timeout=300)
    job = out.stdout.strip().splitlines()[-1]
    http = httpx.Client(base_url=service, timeout=60, headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + 600
    while (state := http.get(f"/v1/jobs/{job}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    assert state["status"] == "succeeded", state["error"]
    subprocess.run(["bash", "-euo", "pipefail", "-c", f"JOB={job}\n" + download], cwd=tmp_path, env=env,
                   check=True, timeout=300)
    (tmp_path / "byom.py").write_text(export + load + "\nprint(pruned(torch.zeros(3, 1, 28, 28)).shape)\n"
                                      "print(sum(int(p.count_nonzero()) for p in model.parameters()))\n")
    printed = subprocess.run([sys.executable, "byom.py"], cwd=tmp_path, check=True, capture_output=True,
                             text=True, timeout=300).stdout.splitlines()
    assert printed[0] == "torch.Size([3, 10])"
    assert int(printed[1]) == state["best"]["nonzero"]
