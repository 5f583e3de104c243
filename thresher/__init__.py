"""Thresher's Python API for users of its downloads.

    import thresher
    model = thresher.load("job-…-compact.safetensors")   # a torch module in eval mode
    model.thresher_manifest["compression_ratio"]

Loading needs torch: install the package with its `worker` extra (`pip install -e ".[worker]"`).
Only safetensors are read (never pickle): see `thresher.loader`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["LoadError", "load"]


class LoadError(ValueError):
    """The file is not a Thresher checkpoint this installation can load; the message says why."""


def load(path: Any) -> nn.Module:
    """The downloaded checkpoint at `path` as a torch module in eval mode, its manifest attached
    as `.thresher_manifest` (see `thresher.loader.load`)."""
    from thresher.loader import load as _load

    return _load(path)
