"""Single `mpd` trials outside the service, to see which training options buy what before a search.

    .venv/bin/python bench/mpd_probe.py --blocks 32 8 1 [--model lenet-300-100] [--dataset mnist]
        [--set epochs=16 …] [--seed 3] [--out bench/results/mpd_probe_cpu.jsonl]

Runs workers.methods.mpd.train_trial once on the model's `thresher zoo train` reference of
bench/mpd_mnist.py with the given block count per prunable layer (LeNet-300-100: fc1 fc2 fc3;
LeNet-5: conv1 conv2 fc1 fc2) and options, and prints one JSON line: validation accuracy and its
drop against the reference's (validation split only: this probe is for choosing defaults, so it
never scores the test split), the parameter ratio and the wall time. Appends the line to --out
when given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mpd_mnist import reference  # noqa: E402
from regularization_probe import (  # noqa: E402
    options_set,
    probe_arguments,
    probe_spec,
    report,
    validation_splits,
)

from core.architectures import get_architecture  # noqa: E402
from core.methods.mpd import choices, fixed_layers  # noqa: E402
from core.settings import Settings  # noqa: E402
from workers.methods.mpd import train_trial  # noqa: E402
from workers.models import zoo  # noqa: E402
from workers.runtime.evaluation import accuracy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, nargs="+", required=True, help="k per prunable layer")
    ap.add_argument("--model", default="lenet-300-100", choices=["lenet-300-100", "lenet-5"])
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    probe_arguments(ap, "mpd")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    cfg = Settings()
    device = torch.device("cpu")
    arch = get_architecture(args.model)
    mpd = options_set(args.set)
    spec = probe_spec("mpd", args.seed, mpd)
    blocks = dict(zip([t.name for t in arch.prunable], args.blocks, strict=True))
    fixed = fixed_layers(arch)
    candidate = [blocks[t.name] for t in arch.prunable if len(choices(t, spec.mpd, fixed)) > 1]
    splits = validation_splits(args.dataset, cfg)
    ref = safetensors.torch.load(reference(args.model, args.dataset, device, cfg).read_bytes())
    ref_val = accuracy(zoo.build(arch).eval(), ref, splits.x_val, splits.y_val)
    started = time.perf_counter()
    out = train_trial(arch, ref, splits, spec, candidate, seed=args.seed, device=device,
                      report=lambda epoch, acc: False, check=lambda: None)
    seconds = time.perf_counter() - started
    line = {"label": args.label, "model": args.model, "dataset": args.dataset, "seed": args.seed,
            "blocks": args.blocks,
            "options": spec.mpd.model_dump(exclude_defaults=True),
            "val_accuracy": out.val_accuracy, "val_drop_pt": 100 * (ref_val - out.val_accuracy),
            "ratio": out.total / out.nonzero, "intermediate": out.intermediate,
            "seconds": round(seconds, 1)}
    report(line, args.out)


if __name__ == "__main__":
    main()
