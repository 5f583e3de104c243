"""CPU latency of a derived model against the dense one, as `best` reports it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.models.latency import cpu_latency


def test_images_are_timed_in_both_layouts_and_flat_inputs_in_one() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    thin = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 8, 1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 36, 10))
    out = cpu_latency(conv, thin, (1, 6, 6), "decomposed", batches=(1, 4), repeats=2)
    assert out["threads"] == torch.get_num_threads()
    for batch in ("1", "4"):
        row = out[batch]
        for r in (row, row["channels_last"]):
            assert r["dense_ms"] > 0 and r["decomposed_ms"] > 0
            assert r["speedup"] == r["dense_ms"] / r["decomposed_ms"]
    # the models themselves are left in their own layout
    assert conv[0].weight.is_contiguous() and thin[1].weight.is_contiguous()
    flat = cpu_latency(nn.Linear(6, 3), nn.Linear(6, 3), (6,), "compact", batches=(2,), repeats=2)
    assert set(flat["2"]) == {"dense_ms", "compact_ms", "speedup"}


class _Views(nn.Module):
    """A model that `view`s a convolution's output, as an exported graph does: it cannot run
    channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 36, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        out: torch.Tensor = self.fc(h.view(h.shape[0], -1))
        return out


def test_a_model_that_cannot_run_channels_last_is_timed_in_nchw_only() -> None:
    with torch.no_grad(), pytest.raises(RuntimeError, match="view size"):
        _Views().to(memory_format=torch.channels_last)(  # type: ignore[call-overload]
            torch.zeros(2, 1, 6, 6).contiguous(memory_format=torch.channels_last))
    out = cpu_latency(_Views(), _Views(), (1, 6, 6), "decomposed", batches=(1, 4), repeats=2)
    assert set(out["4"]) == {"dense_ms", "decomposed_ms", "speedup"}
    assert out["4"]["speedup"] > 0
