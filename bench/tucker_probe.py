"""Single `tucker` trials outside the service, to see which fine-tuning options buy what before a
search.

    .venv/bin/python bench/tucker_probe.py [--model vgg-fashion] [--scale 0 | --scale c1 c2 …]
        [--set epochs=2 lr=0.0003 …] [--seed 3] [--out bench/results/tucker_probe_cpu.jsonl]

Runs workers.methods.tucker.train_trial once on the model's reference (vgg-fashion: the onecycle
reference of bench/models_fashion.py on Fashion-MNIST; LeNet-5: bench/mpd_mnist.py's on MNIST) with
the given log2 rank multipliers around EVBMF's ranks (one value: every decomposed layer) and the
spec's `tucker` options, and prints one JSON line: each decomposed layer's ranks, validation
accuracy after every epoch and the final drop against the reference's (validation split only:
this probe is for choosing defaults, so it never scores the test split), the parameter and
multiply-accumulate ratios, and the wall time. Appends the line to --out when given.
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

import models_fashion  # noqa: E402
from mpd_mnist import reference  # noqa: E402
from regularization_probe import (  # noqa: E402
    options_set,
    probe_arguments,
    probe_spec,
    report,
    validation_splits,
)

from core.architectures import get_architecture  # noqa: E402
from core.methods.tucker import decomposable  # noqa: E402
from core.settings import Settings  # noqa: E402
from workers.methods.tucker import ranks_of, train_trial  # noqa: E402
from workers.models import zoo  # noqa: E402
from workers.runtime.evaluation import accuracy  # noqa: E402

DATASETS = {"vgg-fashion": "fashion-mnist", "lenet-5": "mnist"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vgg-fashion", choices=list(DATASETS))
    ap.add_argument("--scale", type=float, nargs="+", default=[0.0],
                    help="log2 rank multiplier per decomposed layer (one value: all of them)")
    probe_arguments(ap, "tucker")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    cfg = Settings()
    device = torch.device("cpu")
    arch = get_architecture(args.model)
    dataset = DATASETS[args.model]
    spec = probe_spec("tucker", args.seed, options_set(args.set))
    names = decomposable(arch, spec.tucker)
    candidate = args.scale * len(names) if len(args.scale) == 1 else args.scale
    splits = validation_splits(dataset, cfg)
    path = (models_fashion.reference(device, cfg) if args.model == "vgg-fashion"
            else reference(args.model, dataset, device, cfg))
    ref = safetensors.torch.load(path.read_bytes())
    ref_val = accuracy(zoo.build(arch).eval(), ref, splits.x_val, splits.y_val)
    ranks = ranks_of(arch, spec.tucker, ref, candidate)
    started = time.perf_counter()
    out = train_trial(arch, ref, splits, spec, candidate, seed=args.seed, device=device,
                      report=lambda epoch, acc: False, check=lambda: None)
    seconds = time.perf_counter() - started
    line = {"label": args.label, "model": args.model, "seed": args.seed, "scale": candidate,
            "options": spec.tucker.model_dump(exclude_defaults=True),
            "ranks": {k: [r.out, r.inp] for k, r in ranks.items()},
            "val_accuracy": out.val_accuracy, "val_drop_pt": 100 * (ref_val - out.val_accuracy),
            "intermediate": out.intermediate, "params_ratio": out.total / out.nonzero,
            "flops_ratio": (out.total_macs or 0) / (out.macs or 1), "seconds": round(seconds, 1)}
    report(line, args.out)


if __name__ == "__main__":
    main()
