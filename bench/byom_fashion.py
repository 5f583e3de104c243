"""Bring your own model, measured: a ResNet-style net written here in plain torch.nn, trained on
Fashion-MNIST, exported with torch.export and uploaded as a .pt2 archive; magnitude and olmp jobs
through the API, a worker and SQLite; every figure recomputed from the downloaded file by this
script's own module (load_state_dict), against the best uniform keep ratio at the same δ found
here on the same validation split; and the worker's graph interpreter timed against this eager
module in the same run.

    .venv/bin/python bench/byom_fashion.py [--seeds 0 1] [--methods magnitude olmp]

The reference (3 epochs of Adam, one-cycle, on the 54,000 training images) is cached under
var/bench/. Writes bench/results/byom_fashion_<device>.json after every row.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from fastapi.testclient import TestClient
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from graph_interpreter import compare  # noqa: E402
from olmp_mnist import run_job, write_results  # noqa: E402

import thresher.loader  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.splits import DEFAULT_SPLIT_SEED, DEFAULT_VALIDATION_FRACTION  # noqa: E402
from service.app import create_app  # noqa: E402
from store import tokens  # noqa: E402
from store.db import make_engine, make_sessionmaker, transaction, upgrade  # noqa: E402
from workers.jobs.loop import Worker  # noqa: E402
from workers.runtime.data import builtin_arrays, split_arrays  # noqa: E402

DELTA = 0.005
PLANS: dict[str, dict[str, Any]] = {
    "magnitude": {"method": "magnitude", "optimizer": "nevergrad:NGOpt", "budget": {"trials": 60}},
    "olmp": {"method": "olmp", "optimizer": "ncs", "budget": {"trials": 60}, "search": {"population": 6},
             "olmp": {"rounds": 4, "adjust_iterations": 300, "retrain_iterations": 600,
                      "evaluate_every": 150}},
}


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.down(x))


class ResNet(nn.Module):
    """Stem 16, stages of two residual blocks at 16, 32 and 64 channels, global average pooling,
    linear: 174,970 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.stages = nn.Sequential(Block(16, 16, 1), Block(16, 16, 1), Block(16, 32, 2),
                                    Block(32, 32, 1), Block(32, 64, 2), Block(64, 64, 1))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(torch.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        return sum(int((net(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum())
                   for i in range(0, len(y), 1000)) / len(y)


def reference(splits: Any) -> dict[str, torch.Tensor]:
    path = ROOT / "var" / "bench" / "byom-resnet-fashion-s0.safetensors"
    if path.exists():
        return safetensors.torch.load(path.read_bytes())
    print("training the ResNet reference (3 epochs, Adam, one-cycle) …", flush=True)
    torch.manual_seed(0)
    net = ResNet()
    x, y = splits.x_train, splits.y_train
    epochs, batch = 3, 128
    steps = epochs * ((len(y) + batch - 1) // batch)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(y))
        for i in range(0, len(y), batch):
            idx = order[i:i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
        print(f"  epoch {epoch + 1}: validation {accuracy(net, splits.x_val, splits.y_val):.4f}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    path.write_bytes(safetensors.torch.save(state))
    return state


def exported(state: dict[str, torch.Tensor]) -> bytes:
    net = ResNet()
    net.load_state_dict(state)
    net.eval()
    buf = io.BytesIO()
    torch.export.save(torch.export.export(net, (torch.randn(2, 1, 28, 28),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},)), buf)
    return buf.getvalue()


@contextlib.contextmanager
def service(archive: bytes, workdir: Path) -> Iterator[tuple[TestClient, Worker, dict[str, str]]]:
    url = f"sqlite:///{workdir / 'byom.db'}"
    upgrade(url)
    with transaction(make_sessionmaker(make_engine(url))) as s:
        _, token = tokens.create(s, "bench")
    cfg = Settings(database_url=url, cache_dir=workdir / "cache", device="cpu")
    with TestClient(create_app(cfg), headers={"Authorization": f"Bearer {token}"}) as client:
        model = client.post("/v1/models", files={"file": ("resnet.pt2", archive)})
        assert model.status_code == 201, model.text
        ds = client.post("/v1/datasets", json={"builtin": "fashion-mnist"})
        assert ds.status_code == 201, ds.text
        yield client, Worker(cfg, name="bench"), {"model_id": model.json()["id"], "dataset_id": ds.json()["id"]}


def ratio(net: nn.Module) -> float:
    params = list(net.parameters())
    return sum(p.numel() for p in params) / sum(int(p.count_nonzero()) for p in params)


def uniform(state: dict[str, torch.Tensor], splits: Any, ref_val: float) -> dict[str, Any]:
    """The smallest keep ratio, the same for every conv and linear weight (magnitude within each
    layer), whose validation drop is within δ: bisection on a log scale."""
    def pruned(keep: float) -> nn.Module:
        net = ResNet()
        net.load_state_dict(state)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    w = m.weight
                    k = max(1, round(keep * w.numel()))
                    cut = w.abs().flatten().kthvalue(w.numel() - k + 1).values
                    w.mul_((w.abs() >= cut).float())
        return net

    lo, hi = 1e-3, 1.0  # hi is feasible
    for _ in range(14):
        mid = (lo * hi) ** 0.5
        if ref_val - accuracy(pruned(mid), splits.x_val, splits.y_val) <= DELTA:
            hi = mid
        else:
            lo = mid
    net = pruned(hi)
    return {"keep": hi, "ratio": ratio(net), "val_drop": ref_val - accuracy(net, splits.x_val, splits.y_val),
            "test_accuracy": accuracy(net, splits.x_test, splits.y_test)}


def interpreter_speed(checkpoint: bytes) -> dict[str, Any]:
    """The worker's graph module (thresher.load of the download) ÷ this eager module, one thread
    (bench/graph_interpreter.py's timing)."""
    eager = ResNet()
    eager.load_state_dict(safetensors.torch.load(checkpoint))
    graph = thresher.loader.load_bytes(checkpoint)
    return {f"batch_{batch}_{mode}": r for (batch, mode), r in compare(eager, graph).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--methods", nargs="+", default=list(PLANS), choices=list(PLANS))
    ap.add_argument("--tag", default="", help="suffix of the results file (methods run apart)")
    args = ap.parse_args()
    bench = "byom_fashion" + (f"_{args.tag}" if args.tag else "")
    cfg = Settings()
    summary = {"validation": {"fraction": DEFAULT_VALIDATION_FRACTION, "seed": DEFAULT_SPLIT_SEED}}
    splits = split_arrays(builtin_arrays("fashion-mnist", cfg.datasets_dir), summary)
    state = reference(splits)
    ref = ResNet()
    ref.load_state_dict(state)
    ref_val, ref_test = accuracy(ref, splits.x_val, splits.y_val), accuracy(ref, splits.x_test, splits.y_test)
    print(f"reference: validation {ref_val:.4f}, test {ref_test:.4f}, "
          f"{sum(p.numel() for p in ref.parameters())} parameters", flush=True)
    results: dict[str, Any] = {"delta": DELTA, "plans": PLANS, "seeds": args.seeds,
                               "reference": {"val_accuracy": ref_val, "test_accuracy": ref_test},
                               "uniform": uniform(state, splits, ref_val), "rows": []}
    u = results["uniform"]
    print(f"uniform keep ratio: {u['ratio']:.2f}× at val drop {u['val_drop']:+.4f}", flush=True)
    device = torch.device("cpu")
    write_results(bench, False, device, results)
    with tempfile.TemporaryDirectory() as tmp, service(exported(state), Path(tmp)) as (client, worker, ids):
        for method in args.methods:
            for seed in args.seeds:
                done, seconds = run_job(client, worker, {**ids, **PLANS[method], "seed": seed,
                                                         "max_accuracy_drop": DELTA})
                row: dict[str, Any] = {"method": method, "seed": seed, "seconds": seconds,
                                       "status": done["status"]}
                if done["status"] != "succeeded":
                    row["error"] = done["error"]
                    print(f"  {method} seed {seed}: {done['status']}: {done['error']}", flush=True)
                    results["rows"].append(row)
                    continue
                checkpoint = client.get(f"/v1/jobs/{done['id']}/checkpoint").content
                net = ResNet()
                net.load_state_dict(safetensors.torch.load(checkpoint))  # this script's own module
                val = accuracy(net, splits.x_val, splits.y_val)
                row.update(ratio=ratio(net), val_drop=ref_val - val,
                           test_accuracy=accuracy(net, splits.x_test, splits.y_test),
                           reported_ratio=done["best"]["compression_ratio"],
                           reported_test_accuracy=done["test_accuracy"])
                if "interpreter" not in results:
                    results["interpreter"] = interpreter_speed(checkpoint)
                results["rows"].append(row)
                print(f"  {method} seed {seed}: {row['ratio']:.2f}× at val drop {row['val_drop']:+.4f}, "
                      f"test {100 * row['test_accuracy']:.2f} % (ref {100 * ref_test:.2f} %), "
                      f"{seconds:.0f} s", flush=True)
                write_results(bench, False, device, results)
    print(f"\nResNet (plain torch.nn, uploaded as .pt2) on Fashion-MNIST through the service, δ = {DELTA}")
    print(f"{'method':<12}{'seed':>5}{'ratio':>9}{'val drop':>10}{'test loss':>11}{'s':>7}")
    for r in results["rows"]:
        if "ratio" in r:
            print(f"{r['method']:<12}{r['seed']:>5}{r['ratio']:>8.2f}×{r['val_drop']:>+10.4f}"
                  f"{100 * (ref_test - r['test_accuracy']):>+9.2f}pt{r['seconds']:>7.0f}")
    print(f"{'uniform':<12}{'':>5}{u['ratio']:>8.2f}×{u['val_drop']:>+10.4f}"
          f"{100 * (ref_test - u['test_accuracy']):>+9.2f}pt")
    for k, v in results.get("interpreter", {}).items():
        print(f"interpreter ÷ eager, {k.replace('_', ' ')}: {v['ratio']:.2f} "
              f"({v['graph_ms']:.2f} ms against {v['eager_ms']:.2f} ms, one thread)")
    write_results(bench, False, device, results)


if __name__ == "__main__":
    main()
