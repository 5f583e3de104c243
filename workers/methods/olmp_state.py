"""The resumable state of an OLMP job as bytes: safetensors tensors plus a JSON header.

Only this process's own bytes are ever read back here (the job's state blob that a worker of this
service wrote), and they are parsed as safetensors, never unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import safetensors.torch
import torch

from workers.runtime.masked_sgd import TrainerState

FORMAT = "thresher-olmp-state/1"
_KEY = "olmp_state"


@dataclass
class Progress:
    """Where the schedule stands; the trainer's own state says the rest."""

    round: int  # the round in progress (== rounds once retraining)
    phase: str  # "search" (the round's search is next) | "adjust" | "retrain"
    phase_done: int  # iterations of the current adjust/retrain phase already trained
    number: int  # next trial number
    best: dict[str, Any] | None  # the best checkpoint's trial row
    best_thresholds: dict[str, float] | None
    # per retraining attempt: trial number and non-zeros of the adjusted model it starts from
    starts: list[dict[str, int] | None] | None = None
    attempt: int = 0  # the retraining attempt in progress
    attempt_start: int = 0  # the trainer's iteration when it began
    finals: list[int] | None = None  # trial numbers of the scorings that ended an attempt


def _trainer_tensors(trainer: TrainerState, prefix: str) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for kind, group in (("w", trainer.weights), ("v", trainer.velocity)):
        for name, t in group.items():
            tensors[f"{prefix}{kind}/{name}"] = t.detach().to("cpu", torch.float32).contiguous()
    for name, t in trainer.masks.items():
        tensors[f"{prefix}m/{name}"] = t.detach().to("cpu").to(torch.uint8).contiguous()
    for name, t in trainer.buffers.items():  # in their own dtype (a step counter is int64)
        tensors[f"{prefix}b/{name}"] = t.detach().to("cpu").contiguous()
    return tensors


def dump(trainer: TrainerState, progress: Progress, best_params: dict[str, torch.Tensor] | None,
         starts: list[TrainerState | None] | None = None) -> bytes:
    tensors = _trainer_tensors(trainer, "")
    for i, start in enumerate(starts or []):
        if start is not None:  # only weights, masks, velocity, buffers, thresholds are taken from it
            tensors.update(_trainer_tensors(start, f"start{i}/"))
    for name, t in (best_params or {}).items():
        tensors[f"best/{name}"] = t.detach().to("cpu").contiguous()
    tensors["batch_rng"] = trainer.batch_rng.to("cpu").contiguous()
    header = {"format": FORMAT, "thresholds": trainer.thresholds, "iteration": trainer.iteration,
              "coin_rng": trainer.coin_rng, "progress": progress.__dict__,
              "start_thresholds": [st.thresholds if st is not None else None for st in starts or []]}
    return safetensors.torch.save(tensors, metadata={_KEY: json.dumps(header)})


def load(data: bytes) -> tuple[TrainerState, Progress, dict[str, torch.Tensor] | None,
                             list[TrainerState | None]]:
    from core.safetensors_header import HeaderLimits, read_header

    # our own bytes: four tensors per model tensor, so the upload limits do not apply
    _, metadata = read_header(data, "training state", HeaderLimits(max_tensors=1 << 20))
    header = json.loads(metadata[_KEY])
    if header.get("format") != FORMAT:
        raise ValueError(f"unknown training state format {header.get('format')!r}")
    tensors = safetensors.torch.load(data)

    def group(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}

    state = TrainerState(
        weights=group("w"), masks={k: v.float() for k, v in group("m").items()},
        velocity=group("v"), thresholds={k: float(v) for k, v in header["thresholds"].items()},
        iteration=int(header["iteration"]), batch_rng=tensors["batch_rng"],
        coin_rng=header["coin_rng"], buffers=group("b"))
    best = group("best") or None
    starts: list[TrainerState | None] = []
    for i, thresholds in enumerate(header.get("start_thresholds") or []):
        prefix = f"start{i}/"
        starts.append(None if thresholds is None else TrainerState(
            weights=group(prefix + "w"), masks={k: v.float() for k, v in group(prefix + "m").items()},
            velocity=group(prefix + "v"), thresholds={k: float(v) for k, v in thresholds.items()},
            iteration=state.iteration, batch_rng=state.batch_rng, coin_rng=state.coin_rng,
            buffers=group(prefix + "b")))
    return state, Progress(**header["progress"]), best, starts
