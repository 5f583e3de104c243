"""How far apart a LeNet's validation and test errors sit, reference by reference.

    .venv/bin/python bench/reference_spread.py [--models lenet-300-100] [--seeds 0 1 2 3]

Every MNIST bench of this project judges a compressed model's test error against one Caffe-trained
reference (bench/olmp_mnist.py, seed 0). Its test drop is then (pruned test error) − (that
reference's test error), and if the one reference happens to be luckier on the 10,000 test
images than on the 6,000 validation images, every job of every method pays that luck on test and
not on validation. This trains the references of several seeds with the same solver (Caffe's
LeNet solver, 10,000 iterations; seed 0's cached file is reused) and prints, per seed, the
validation and test errors and their gap, scored by a plain torch model written in the OLMP bench.
Writes bench/results/reference_spread_<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from olmp_mnist import plain_model, reference, test_error, write_results  # noqa: E402

from core.settings import Settings  # noqa: E402
from core.splits import DEFAULT_SPLIT_SEED, DEFAULT_VALIDATION_FRACTION  # noqa: E402
from workers.models.reference_training import train_builtin  # noqa: E402
from workers.runtime.data import builtin_arrays, split_arrays  # noqa: E402

REFERENCE_ITERATIONS = 10_000  # the MNIST benches' (bench/olmp_mnist.py's FULL plans, Caffe's)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["lenet-300-100"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3])
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg, device = Settings(), torch.device("cpu")
    summary = {"validation": {"fraction": DEFAULT_VALIDATION_FRACTION, "seed": DEFAULT_SPLIT_SEED}}
    splits = split_arrays(builtin_arrays("mnist", cfg.datasets_dir), summary)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models:
            for seed in args.seeds:
                if seed == 0:  # the one every bench uses, cached under var/bench
                    path, _ = reference(arch, REFERENCE_ITERATIONS, device, cfg)
                else:
                    path = Path(tmp) / f"{arch}-s{seed}.safetensors"
                    train_builtin(arch, "mnist", cfg.datasets_dir, recipe="caffe",
                                  iterations=REFERENCE_ITERATIONS, seed=seed, device=device, out=path)
                model = plain_model(arch, safetensors.torch.load(path.read_bytes()))
                val = test_error(model, splits.x_val, splits.y_val)
                test = test_error(model, splits.x_test, splits.y_test)
                rows.append({"model": arch, "seed": seed, "val_error": val, "test_error": test,
                             "gap": val - test})
                print(f"{arch} seed {seed}: validation {val:.2f} %, test {test:.2f} %, "
                      f"gap {val - test:+.2f} pt", flush=True)
    print(f"\n{'model':<16}{'seed':>5}{'val err %':>11}{'test err %':>12}{'gap pt':>8}")
    for r in rows:
        print(f"{r['model']:<16}{r['seed']:>5}{r['val_error']:>11.2f}{r['test_error']:>12.2f}"
              f"{r['gap']:>+8.2f}")
    for arch in args.models:
        gaps = [r["gap"] for r in rows if r["model"] == arch]
        print(f"{arch}: gap median {statistics.median(gaps):+.2f} pt over seeds {args.seeds}")
    write_results("reference_spread", False, device, {"seeds": args.seeds, "rows": rows})


if __name__ == "__main__":
    main()
