"""Single l0 / sgl trials outside the service, to see which options buy what before a search.

    .venv/bin/python bench/regularization_probe.py --model lenet-5 --method sgl \\
        --strengths -5 -5 -5 -5 -4 -4 -4 -4 --set epochs=5 ramp_epochs=3 [--set …] [--seed 3]

Runs workers.methods.regularized.run_trial once on the Caffe reference of bench/olmp_mnist.py
(vgg-fashion: bench/models_fashion.py's onecycle reference, on Fashion-MNIST) with the given
log10 strengths (l0: one λ per prunable tensor; sgl: all λ, then all η) and options, and prints one JSON line: validation accuracy and its drop against the reference's
(validation split only: this probe is for choosing defaults, so it never scores the test
split), weights ratio, units left per layer, epochs per second and wall time. A `--strengths`
of one value is used for every tensor. Appends the line to --out when given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import models_fashion  # noqa: E402
from olmp_mnist import reference  # noqa: E402

from core.architectures import get_architecture  # noqa: E402
from core.methods.regularization import RegularizationOptions  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.spec import JobSpec  # noqa: E402
from core.splits import DEFAULT_SPLIT_SEED, DEFAULT_VALIDATION_FRACTION  # noqa: E402
from workers.methods.regularized import run_trial, strengths_needed  # noqa: E402
from workers.models import zoo  # noqa: E402
from workers.runtime.data import Splits, builtin_arrays, split_arrays  # noqa: E402
from workers.runtime.evaluation import accuracy  # noqa: E402

REFERENCE_ITERATIONS = 10_000


def option_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def probe_arguments(ap: argparse.ArgumentParser, options: str) -> None:
    """The arguments every single-trial probe takes (this one and bench/mpd_probe.py)."""
    ap.add_argument("--set", nargs="*", default=[], help=f"option=value pairs of the spec's {options}")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", type=Path, help="a JSON-lines file the probe's line is appended to")


def options_set(pairs: list[str]) -> dict[str, object]:
    return {k: option_value(v) for k, v in (s.split("=", 1) for s in pairs)}


def probe_spec(method: str, seed: int, options: dict[str, object]) -> JobSpec:
    """A one-trial job spec of `method` with its options, as the probes' trials read it."""
    return JobSpec.model_validate({"model_id": "probe", "dataset_id": "probe", "method": method,
                                   "max_accuracy_drop": 0.005, "budget": {"trials": 1},
                                   "seed": seed, method: options})


def validation_splits(dataset: str, cfg: Settings) -> Splits:
    """A built-in dataset split as a job splits it by default."""
    summary = {"validation": {"fraction": DEFAULT_VALIDATION_FRACTION, "seed": DEFAULT_SPLIT_SEED}}
    return split_arrays(builtin_arrays(dataset, cfg.datasets_dir), summary)


def report(line: dict[str, object], out: Path | None) -> None:
    print(json.dumps(line), flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(json.dumps(line) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lenet-5", choices=["lenet-5", "lenet-300-100", "vgg-fashion"])
    ap.add_argument("--method", default="sgl", choices=["l0", "sgl"])
    ap.add_argument("--strengths", type=float, nargs="+", required=True)
    probe_arguments(ap, "regularization")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    cfg = Settings()
    device = torch.device("cpu")
    arch = get_architecture(args.model)
    options = RegularizationOptions(**options_set(args.set))
    needed = strengths_needed(args.method, arch)
    strengths = args.strengths * needed if len(args.strengths) == 1 else args.strengths
    if args.model == "vgg-fashion":  # the models bench's reference, on its own dataset
        splits = validation_splits("fashion-mnist", cfg)
        path = models_fashion.reference(device, cfg)
    else:
        splits = validation_splits("mnist", cfg)
        path, _ = reference(args.model, REFERENCE_ITERATIONS, device, cfg)
    ref = safetensors.torch.load(path.read_bytes())
    net = zoo.build(arch).eval()
    ref_val = accuracy(net, ref, splits.x_val, splits.y_val)
    started = time.perf_counter()
    out = run_trial(args.method, arch, ref, splits, options, strengths, seed=args.seed, device=device,
                    report=lambda epoch, acc: False, check=lambda: None)
    seconds = time.perf_counter() - started
    epochs = options.epochs + options.finetune_epochs
    line = {"label": args.label, "model": args.model, "method": args.method, "seed": args.seed,
            "options": options.model_dump(exclude_defaults=True), "strengths": strengths,
            "val_accuracy": out.val_accuracy, "val_drop_pt": 100 * (ref_val - out.val_accuracy),
            "weights_ratio": out.total / out.nonzero, "nonzero": out.nonzero,
            "groups_kept": out.groups_kept, "kept": out.kept,
            "intermediate": out.intermediate, "seconds": round(seconds, 1),
            "epochs_per_s": epochs / seconds}
    report(line, args.out)


if __name__ == "__main__":
    main()
