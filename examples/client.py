"""Compress your own model with the Python client: export it, upload it, submit a job, follow it,
download the result and load it back into your module.

    THRESHER_URL=http://127.0.0.1:8000 THRESHER_TOKEN=$(cat var/admin-token) python examples/client.py

Needs torch (to build and export the example net) and the `thresher` package (for the client).
"""

from __future__ import annotations

import os
import sys

import safetensors.torch
import torch
from torch import nn

from thresher.client import Client, JobDoc

# your model: here a small convnet, untrained, so that the example runs in seconds
model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(8 * 14 * 14, 10)).eval()
program = torch.export.export(model, (torch.randn(2, 1, 28, 28),),
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
torch.export.save(program, "example.pt2")

with Client(os.environ.get("THRESHER_URL", "http://127.0.0.1:8000"), os.environ["THRESHER_TOKEN"]) as c:
    uploaded = c.upload_model("example.pt2", name="example")
    data = c.upload_dataset(builtin="fashion-mnist")
    job = c.submit(uploaded.id, data.id, method="magnitude", max_accuracy_drop=0.01,
                   budget={"trials": 10}, seed=0)

    def show(doc: JobDoc) -> None:
        p = doc.progress
        print(f"{doc.status}: {p.trials_done}/{p.trials_total} trials", flush=True)

    done = c.wait(job.id, progress=show, poll_seconds=0.5)
    if done.status != "succeeded" or done.best is None:
        sys.exit(f"job {job.id} {done.status}: {done.error}")
    c.download(job.id, "example-pruned.safetensors")

model.load_state_dict(safetensors.torch.load_file("example-pruned.safetensors"))
kept = sum(int(p.count_nonzero()) for p in model.parameters())
print(f"{done.best.compression_ratio:.2f}x smaller: {kept} weights kept, "
      f"test accuracy {done.test_accuracy:.4f}")
