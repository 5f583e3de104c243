"""Choosing the device: CUDA when present (or asked for), CPU otherwise."""

from __future__ import annotations

import os

import torch


def pick(setting: str = "auto") -> torch.device:
    if setting == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(setting)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"THRESHER_DEVICE={setting} but CUDA is not available")
    if device.type == "cuda":
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
