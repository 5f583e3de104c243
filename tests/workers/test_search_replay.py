"""Resuming a search from stored trials, in process (the database path is in test_worker_e2e)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import safetensors.torch

from core.architectures import get_architecture
from core.spec import JobSpec
from workers.methods.magnitude import MagnitudeSearch
from workers.models import zoo
from workers.runtime.data import split_arrays
from workers.search.trials import Evaluated


class ListRecorder:
    def __init__(self, stored: dict[int, Evaluated] | None = None) -> None:
        self.stored = stored or {}
        self.written: list[Evaluated] = []

    def replay(self, number: int) -> Evaluated | None:
        return self.stored.get(number)

    def write(self, trials: Sequence[Evaluated], **_: Any) -> None:
        self.written.extend(trials)

    def set_reference(self, reference: dict[str, Any]) -> None:
        pass

    def check(self) -> None:
        pass

    def flush(self) -> None:
        pass


def _search(weights: bytes, arrays: dict[str, np.ndarray], recorder: ListRecorder,
            evaluation: str = "auto") -> MagnitudeSearch:
    arch = get_architecture("lenet-300-100")
    spec = JobSpec.model_validate({"model_id": "m", "dataset_id": "d", "max_accuracy_drop": 0.01,
                                   "budget": {"trials": 48}, "optimizer": "nevergrad:CMA", "seed": 5,
                                   "search": {"evaluation": evaluation}})
    return MagnitudeSearch(arch, zoo.build(arch).eval(), safetensors.torch.load(weights),
                           split_arrays(arrays, {}), spec, recorder)


def test_replay_tells_stored_results_and_scores_only_the_rest(small_model_weights: bytes,
                                                              small_arrays: dict[str, np.ndarray]) -> None:
    full = ListRecorder()
    expected = _search(small_model_weights, small_arrays, full).run()
    assert [t.number for t in full.written] == list(range(48))

    resumed = ListRecorder({t.number: t for t in full.written[:24]})
    result = _search(small_model_weights, small_arrays, resumed).run()
    assert [t.number for t in resumed.written] == list(range(24, 48))  # nothing recomputed
    def untimed(trials: Sequence[Evaluated]) -> list[Evaluated]:
        return [dataclasses.replace(t, duration_ms=0.0) for t in trials]

    assert untimed(resumed.written) == untimed(full.written[24:])  # the same trajectory
    assert untimed([result.best]) == untimed([expected.best])


def test_a_diverged_replay_rebuilds_the_optimizer_and_finishes(small_model_weights: bytes,
                                                               small_arrays: dict[str, np.ndarray]) -> None:
    full = ListRecorder()
    _search(small_model_weights, small_arrays, full).run()
    stored = {t.number: t for t in full.written[:32]}
    # as if another library version had asked trial 20 differently
    stored[20] = dataclasses.replace(stored[20], candidate=[c - 0.01 for c in stored[20].candidate])
    resumed = ListRecorder(stored)
    result = _search(small_model_weights, small_arrays, resumed).run()
    assert [t.number for t in resumed.written] == list(range(32, 48))
    assert result.best.feasible and result.best.number < 48


def untimed(trials: Sequence[Evaluated]) -> list[Evaluated]:
    return [dataclasses.replace(t, duration_ms=0.0) for t in trials]


def test_a_batched_search_makes_the_same_trials_as_a_looped_one(small_model_weights: bytes,
                                                                small_arrays: dict[str, np.ndarray]) -> None:
    looped, batched = ListRecorder(), ListRecorder()
    a = _search(small_model_weights, small_arrays, looped, "loop").run()
    b = _search(small_model_weights, small_arrays, batched, "batched").run()
    assert untimed(looped.written) == untimed(batched.written)
    assert untimed([a.best]) == untimed([b.best])
