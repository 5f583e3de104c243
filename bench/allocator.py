"""What glibc's allocator costs a worker: the same CPU workloads with glibc's default thresholds
and with workers.runtime.allocator.keep_freed_memory (what every worker sets at start), one
torch thread, each setting in its own fresh process (a process cannot go back to the dynamic
thresholds once set), the processes alternated A B A B so both see the same machine.

    .venv/bin/python bench/allocator.py

Workloads: the test ResNet of tests/graph_models.py at batch 256 (eval forward; train
forward+backward), and one Adam step of the built-in LeNet-5 (batch 100) and vgg-fashion
(batch 128), the trainers' inner loop. Prints per workload the median ms of each setting, the
speed-up and the page faults per step; writes bench/results/allocator_cpu.json.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ROUNDS = 2  # processes per setting

CHILD = r"""
import json, resource, statistics, sys, time
import torch
from torch import nn
from workers.runtime import allocator
if sys.argv[1] == "keep":
    assert allocator.keep_freed_memory()
from core.architectures import get_architecture
from tests.graph_models import NETS
from workers.models import zoo
torch.set_num_threads(1)
torch.manual_seed(0)

def resnet(train):
    net, x = NETS["resnet"](), torch.randn(256, 1, 28, 28)
    net.train(train)
    def run():
        if train:
            net.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
        else:
            with torch.no_grad():
                net(x)
    return run

def adam_step(name, batch):
    net = zoo.build(get_architecture(name)).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    def run():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return run

out = {}
for name, run, repeats in [("resnet batch 256 forward", resnet(False), 30),
                           ("resnet batch 256 forward+backward", resnet(True), 15),
                           ("lenet-5 adam step, batch 100", adam_step("lenet-5", 100), 60),
                           ("vgg-fashion adam step, batch 128", adam_step("vgg-fashion", 128), 15)]:
    for _ in range(3):
        run()
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    out[name] = {"ms": 1e3 * statistics.median(times),
                 "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats}
print(json.dumps(out))
"""


def child(mode: str) -> dict[str, dict[str, float]]:
    r = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=ROOT, capture_output=True, text=True,
                       check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    from olmp_mnist import write_results

    runs: dict[str, list[dict[str, dict[str, float]]]] = {"default": [], "keep": []}
    for _ in range(ROUNDS):
        for mode in runs:
            runs[mode].append(child(mode))
    rows: dict[str, Any] = {}
    print(f"{'workload':<36}{'glibc default':>15}{'kept':>10}{'speed-up':>10}{'faults/step':>22}")
    for name in runs["default"][0]:
        d = statistics.median(r[name]["ms"] for r in runs["default"])
        k = statistics.median(r[name]["ms"] for r in runs["keep"])
        fd = statistics.median(r[name]["faults"] for r in runs["default"])
        fk = statistics.median(r[name]["faults"] for r in runs["keep"])
        rows[name] = {"default_ms": d, "kept_ms": k, "speedup": d / k, "default_faults": fd,
                      "kept_faults": fk}
        print(f"{name:<36}{d:>12.2f} ms{k:>7.2f} ms{d / k:>9.2f}×{fd:>12.0f} → {fk:<8.0f}")
    import torch

    write_results("allocator", False, torch.device("cpu"), {"rows": rows, "processes_per_setting": ROUNDS})


if __name__ == "__main__":
    main()
