"""The figures every derived download (block-diagonal, decomposed) reports about itself, measured
on the module the loader would build, against the dense model it replaces."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.architectures import Architecture
from workers.models import zoo
from workers.models.flops import macs
from workers.models.latency import cpu_latency
from workers.runtime.data import Splits
from workers.runtime.evaluation import accuracy

# a derived module must compute what the dense model does (float rounding apart)
LOGITS_TOLERANCE = 1e-4


def figures(arch: Architecture, dense: nn.Module, derived: nn.Module, splits: Splits, name: str,
            *, derived_macs: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(the derived module's tensors, its figures): the largest logit difference from `dense` on
    256 test images (over LOGITS_TOLERANCE raises), its test accuracy, its multiply-accumulates
    against the architecture's and its CPU latency against `dense`."""
    x_test, y_test = splits.x_test.cpu(), splits.y_test.cpu()
    with torch.inference_mode():
        probe = x_test[:256]
        gap = float((derived(probe) - dense(probe)).abs().max())
    if gap > LOGITS_TOLERANCE:
        raise RuntimeError(f"the {name} model's logits differ from the dense model's by {gap}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in derived.state_dict().items()}
    reference_macs = macs(zoo.build(arch), arch.input_shape)
    return tensors, {
        "test_accuracy": accuracy(derived, dict(tensors), x_test, y_test),
        "macs": derived_macs, "reference_macs": reference_macs,
        "flops_ratio": reference_macs / derived_macs, "max_logit_difference": gap,
        "cpu_latency": cpu_latency(dense, derived, arch.input_shape, name)}

