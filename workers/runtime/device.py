"""Choosing the device: CUDA when present (or asked for), CPU otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from workers.runtime import gpu_slots


def pick(setting: str = "auto", gpu_lock_dir: Path | None = None) -> torch.device:
    """`gpu_lock_dir`: where workers sharing a machine's GPUs take one each (workers.runtime.gpu_slots);
    it applies when the setting names no GPU index ("auto" or "cuda")."""
    if setting == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(setting)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"THRESHER_DEVICE={setting} but CUDA is not available")
    if device.type == "cuda" and device.index is None and gpu_lock_dir is not None:
        device = torch.device("cuda", gpu_slots.claim(gpu_lock_dir, torch.cuda.device_count()))
    if device.type == "cuda":
        if device.index is not None:  # streams, graphs and caches follow the current device
            torch.cuda.set_device(device.index)
        deterministic()
    return device


def deterministic() -> None:
    """Same spec and seed, same result on the same GPU: cuBLAS and cuDNN without their
    nondeterministic kernels (cuBLAS reads its workspace setting when its handle is made)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # warn_only: an op without a deterministic kernel warns instead of failing a user's job
    torch.use_deterministic_algorithms(True, warn_only=True)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
