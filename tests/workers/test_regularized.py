"""Methods l0 and sgl: one trial is one real training run (LeNet-300-100, 4,000 MNIST images)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from core.architectures import get_architecture
from core.methods.regularization import RegularizationOptions
from workers.methods import TrialOutcome
from workers.methods.regularized import run_trial
from workers.runtime.data import Splits, split_arrays

ARCH = get_architecture("lenet-300-100")
CPU = torch.device("cpu")
# Short trials on 4,000 images make few Adam steps: a larger lr lets gates close within them.
L0 = dict(epochs=2, finetune_epochs=1, lr=1e-2, batch_size=50)
SGL = dict(epochs=2, finetune_epochs=1, lr=1e-3, batch_size=50)


@pytest.fixture(scope="module")
def splits(small_arrays: dict[str, np.ndarray]) -> Splits:
    return split_arrays(small_arrays, {})


@pytest.fixture(scope="module")
def reference(small_model_weights: bytes) -> dict[str, torch.Tensor]:
    return safetensors.torch.load(small_model_weights)


def trial(method: str, reference: dict[str, torch.Tensor], splits: Splits,
          strengths: Sequence[float], *, seed: int = 0, report: Any = None, check: Any = None,
          **options: Any) -> TrialOutcome:
    return run_trial(method, ARCH, reference, splits, RegularizationOptions(**options), strengths,
                     seed=seed, device=CPU, report=report or (lambda _e, _a: False),
                     check=check or (lambda: None))


def assert_consistent(out: TrialOutcome) -> None:
    assert out.total == ARCH.total_parameters
    assert out.nonzero == sum(int(torch.count_nonzero(v)) for v in out.params.values())
    assert out.kept == {t.name: int(torch.count_nonzero(out.params[t.name])) for t in ARCH.prunable}
    assert {k: tuple(v.shape) for k, v in out.params.items()} == {t.name: t.shape for t in ARCH.tensors}
    assert all(v.device.type == "cpu" for v in out.params.values())


def test_l0_strong_lambda_prunes_more_than_weak(reference, splits) -> None:  # type: ignore[no-untyped-def]
    weak = trial("l0", reference, splits, [-6.0] * 3, **L0)
    strong = trial("l0", reference, splits, [-3.0] * 3, **L0)
    for out in (weak, strong):
        assert_consistent(out)
        assert len(out.intermediate) == 2 and out.pruned_at is None
    assert strong.nonzero < weak.nonzero / 10
    assert weak.val_accuracy > 0.8  # a weak regularizer keeps the model working
    assert all(strong.kept[n] < weak.kept[n] for n in strong.kept)


def test_l0_per_neuron_prunes_whole_input_columns(reference, splits) -> None:  # type: ignore[no-untyped-def]
    out = trial("l0", reference, splits, [-4.5] * 3, granularity="neuron", **L0)
    assert_consistent(out)
    assert out.groups_kept["fc1.weight"] < 784
    for t in ARCH.prunable:
        w = out.params[t.name]
        columns = w.ne(0).any(dim=0)
        assert int(columns.sum()) == out.groups_kept[t.name]
        # the zeros are whole input neurons (the gates) and whole rows (units nothing reads any
        # more, whose inputs went too), nothing finer
        rows = int(w.ne(0).any(dim=1).sum())
        assert out.kept[t.name] == out.groups_kept[t.name] * rows


def test_sgl_strong_strengths_prune_more_than_weak(reference, splits) -> None:  # type: ignore[no-untyped-def]
    weak = trial("sgl", reference, splits, [-6.0] * 6, **SGL)
    strong = trial("sgl", reference, splits, [-3.0] * 6, **SGL)
    assert_consistent(weak)
    assert_consistent(strong)
    assert strong.nonzero < weak.nonzero / 5
    # λ acts on whole input columns: fc1 loses pixels entirely
    assert strong.groups_kept["fc1.weight"] < weak.groups_kept["fc1.weight"]
    assert weak.val_accuracy > 0.8


def test_sgl_lambda_alone_removes_groups_eta_alone_single_weights(reference, splits) -> None:  # type: ignore[no-untyped-def]
    group = trial("sgl", reference, splits, [-3.0] * 3 + [-12.0] * 3, **SGL)
    single = trial("sgl", reference, splits, [-12.0] * 3 + [-3.5] * 3, **SGL)
    w = group.params["fc1.weight"]
    kept_columns = w.ne(0).any(dim=0)
    assert int(kept_columns.sum()) < 784
    # group lasso zeroes whole columns and leaves the survivors nearly dense
    assert int(w[:, kept_columns].ne(0).sum()) > 0.9 * w.shape[0] * int(kept_columns.sum())
    # ℓ0 zeroes single weights inside columns that survive
    s = single.params["fc1.weight"]
    live = s.ne(0).any(dim=0)
    assert int(s[:, live].ne(0).sum()) < 0.5 * s.shape[0] * int(live.sum())


def test_sgl_prices_living_units_biases_and_keeps_pruned_ones_zero(reference, splits) -> None:  # type: ignore[no-untyped-def]
    strengths = [-12.0] * 3 + [-3.5] * 3  # ℓ0 alone: units live, single entries go
    kept = trial("sgl", reference, splits, strengths, **SGL)  # the default: biases not priced
    pruned = trial("sgl", reference, splits, strengths, prune_biases=True, **SGL)
    raw = trial("sgl", reference, splits, strengths, prune_biases=True,
                **{**SGL, "finetune_epochs": 0})
    assert_consistent(pruned)
    for layer in ("fc1", "fc2"):
        alive = pruned.params[f"{layer}.weight"].ne(0).any(dim=1)
        # without the option every living unit keeps its bias; with it some lose theirs
        assert bool(kept.params[f"{layer}.bias"][kept.params[f"{layer}.weight"].ne(0).any(dim=1)]
                    .ne(0).all())
        assert int(pruned.params[f"{layer}.bias"][alive].eq(0).sum()) > 0, layer
        # fine-tuning does not bring a pruned bias back
        assert torch.equal(pruned.params[f"{layer}.bias"] == 0, raw.params[f"{layer}.bias"] == 0)
    assert pruned.nonzero < kept.nonzero
    # l0 has no such term: the option leaves its trials as they were
    l0 = trial("l0", reference, splits, [-4.0] * 3, **L0)
    assert torch.equal(trial("l0", reference, splits, [-4.0] * 3, prune_biases=True, **L0)
                       .params["fc1.bias"], l0.params["fc1.bias"])


def test_fine_tuning_keeps_the_zero_pattern(reference, splits) -> None:  # type: ignore[no-untyped-def]
    for method, strengths, opts in (("l0", [-4.0] * 3, L0), ("sgl", [-4.0] * 6, SGL)):
        tuned = trial(method, reference, splits, strengths, **opts)
        raw = trial(method, reference, splits, strengths, **{**opts, "finetune_epochs": 0})
        for t in ARCH.prunable:
            # the regularized epochs are identical (same seed), so the zeros must be too
            assert torch.equal(tuned.params[t.name] == 0, raw.params[t.name] == 0), (method, t.name)
        assert not torch.equal(tuned.params["fc1.weight"], raw.params["fc1.weight"])
        assert raw.val_accuracy == raw.intermediate[-1]


def test_report_true_stops_the_trial(reference, splits) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[int, float]] = []

    def report(epoch: int, acc: float) -> bool:
        seen.append((epoch, acc))
        return epoch == 1

    for method, n in (("l0", 3), ("sgl", 6)):
        seen.clear()
        out = trial(method, reference, splits, [-4.0] * n, report=report,
                    **{**(L0 if method == "l0" else SGL), "epochs": 4})
        assert out.pruned_at == 1
        assert [e for e, _ in seen] == [0, 1]
        assert out.intermediate == [a for _, a in seen]
        assert out.val_accuracy == out.intermediate[-1]  # no fine-tuning after a stop
        assert_consistent(out)


def test_check_is_called_and_aborts(reference, splits) -> None:  # type: ignore[no-untyped-def]
    calls = 0

    def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        trial("l0", reference, splits, [-4.0] * 3, check=check, **L0)
    # 4,000 images in batches of 50: 80 batches an epoch, a check every 50 batches
    assert calls == 3


def test_same_seed_same_outcome_other_seed_differs(reference, splits) -> None:  # type: ignore[no-untyped-def]
    opts = {**L0, "epochs": 1, "finetune_epochs": 1, "train_subset": 2000}
    a = trial("l0", reference, splits, [-4.0] * 3, seed=7, **opts)
    b = trial("l0", reference, splits, [-4.0] * 3, seed=7, **opts)
    c = trial("l0", reference, splits, [-4.0] * 3, seed=8, **opts)
    assert a.params.keys() == b.params.keys()
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert (a.val_accuracy, a.intermediate, a.kept) == (b.val_accuracy, b.intermediate, b.kept)
    assert not torch.equal(a.params["fc1.weight"], c.params["fc1.weight"])
    s1 = trial("sgl", reference, splits, [-4.0] * 6, seed=7, **opts)
    s2 = trial("sgl", reference, splits, [-4.0] * 6, seed=7, **opts)
    assert all(torch.equal(s1.params[k], s2.params[k]) for k in s1.params)


def test_wrong_number_of_strengths_is_rejected(reference, splits) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="takes 6 strengths"):
        trial("sgl", reference, splits, [-4.0] * 3, **SGL)
    with pytest.raises(ValueError, match="unknown regularization method"):
        trial("l1", reference, splits, [-4.0] * 3, **SGL)
