"""workers.runtime.allocator: with the thresholds set, the activations a forward pass frees are
reused by the next one instead of being faulted in from the kernel again (counted by the
kernel's minor-fault counter in fresh processes, so the test process's own allocator settings
are not what is measured)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, resource, sys, torch
from workers.runtime import allocator
kept = allocator.keep_freed_memory() if sys.argv[1] == "keep" else False
from tests.graph_models import NETS
torch.manual_seed(0)
torch.set_num_threads(1)
net, x = NETS["resnet"]().eval(), torch.randn(256, 1, 28, 28)
with torch.no_grad():
    for _ in range(3):  # until glibc's heap and thresholds have settled
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        net(x)
print(json.dumps({"kept": kept, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5}))
"""


def _faults(mode: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_keep_their_pages() -> None:
    default, kept = _faults("default"), _faults("keep")
    assert kept["kept"] is True and default["kept"] is False
    # a batch-256 forward pass of the test ResNet allocates ~110 MB of activations (27,000
    # pages): glibc's default hands part of it back to the kernel after every pass, and those
    # pages fault in again at the next
    assert float(default["faults"]) > 2000  # type: ignore[arg-type]
    assert float(kept["faults"]) < float(default["faults"]) / 10  # type: ignore[arg-type]
