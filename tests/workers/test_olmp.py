"""The `olmp` pipeline in process on CPU: its trials, its result, and resuming from saved state."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from core.architectures import get_architecture
from core.spec import JobSpec, planned_trials
from workers.methods import olmp_state
from workers.methods.olmp_search import OlmpSearch
from workers.models import zoo
from workers.runtime.data import split_arrays
from workers.runtime.evaluation import accuracy
from workers.search.trials import Evaluated, SearchResult

SCHEDULE = {"rounds": 3, "adjust_iterations": 60, "retrain_iterations": 120, "evaluate_every": 50,
            "search_drop": 0.03, "retrain_drop": 0.015, "retrain_attempts": 2}
# (4 retraining attempts at most by default, from models about 1.25× larger each time)


class StateRecorder:
    """Keeps every trial and every saved state (with how many trials preceded it)."""

    def __init__(self, stored: dict[int, Evaluated] | None = None) -> None:
        self.stored = stored or {}
        self.written: list[Evaluated] = []
        self.states: list[tuple[int, bytes]] = []
        self.boundaries: list[int] = []  # trials stored after each write (writes are atomic)

    def replay(self, number: int) -> Evaluated | None:
        return self.stored.get(number)

    def write(self, trials: Sequence[Evaluated], **_: Any) -> None:
        self.written.extend(trials)
        self.boundaries.append(len(self.stored) + len(self.written))

    def set_reference(self, reference: dict[str, Any]) -> None:
        pass

    def check(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def save_state(self, data: bytes) -> None:
        self.states.append((len(self.stored) + len(self.written), data))


def _spec(**extra: Any) -> JobSpec:
    body: dict[str, Any] = {"model_id": "m", "dataset_id": "d", "method": "olmp",
                            "optimizer": "ncs", "max_accuracy_drop": 0.02, "budget": {"trials": 24},
                            "seed": 2, "olmp": SCHEDULE}
    body.update(extra)
    return JobSpec.model_validate(body)


def _run(weights: bytes, arrays: dict[str, np.ndarray], recorder: StateRecorder, spec: JobSpec,
         state: bytes | None = None) -> SearchResult:
    arch = get_architecture("lenet-300-100")
    return OlmpSearch(arch, zoo.build(arch).eval(), safetensors.torch.load(weights),
                      split_arrays(arrays, {}), spec, recorder, state, state_seconds=0.0).run()


def _search_images(arrays: dict[str, np.ndarray], seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images a round's candidates are scored on, by the rule the README states: the
    first 1,000 positions of torch.randperm(n) seeded with the job's seed, sorted."""
    picked = torch.randperm(len(arrays["y_train"]),
                            generator=torch.Generator().manual_seed(seed))[:1000].sort().values
    return torch.from_numpy(arrays["x_train"])[picked], torch.from_numpy(arrays["y_train"])[picked]


def _untimed(trials: Sequence[Evaluated]) -> list[Evaluated]:
    return [dataclasses.replace(t, duration_ms=0.0) for t in trials]


@pytest.fixture(scope="module")
def full_run(small_model_weights: bytes, small_arrays: dict[str, np.ndarray]
             ) -> tuple[StateRecorder, SearchResult]:
    recorder = StateRecorder()
    return recorder, _run(small_model_weights, small_arrays, recorder, _spec())


def test_trials_follow_the_schedule_round_by_round(full_run: tuple[StateRecorder, SearchResult]) -> None:
    recorder, _ = full_run
    trials = recorder.written
    spec = _spec()
    # every retraining attempt planned; a job whose first attempt ends within δ records fewer
    assert [t.number for t in trials] == list(range(len(trials)))
    # per attempt: scorings at 50, 100 and 120 iterations, then its end on the hold-out
    assert len(trials) <= planned_trials(spec) == 24 + 1 + 3 + 2 * (3 + 1)
    assert trials[0].stage == "reference" and trials[0].accuracy_drop == 0.0
    # per round: its share of the search budget (8 each), then the adjusted model
    for r in range(3):
        in_round = [t for t in trials if t.round == r and t.stage in ("search", "adjust")]
        assert [t.stage for t in in_round] == ["search"] * 8 + ["adjust"]
    retrain = [t for t in trials if t.stage == "retrain" and t.round == 3]
    assert len(retrain) == 3  # at 50, 100 and 120
    # masks are frozen while retraining: the size stays put
    assert len({t.nonzero for t in retrain}) == 1
    # a third of the 1,000 validation images is held out: every whole model is scored on the
    # rest, and only an attempt's end on the held-out third, once, right after its last scoring
    assert all(t.scored_on == 667 for t in trials if t.stage not in ("search", "confirm"))
    confirms = [t for t in trials if t.stage == "confirm"]
    assert confirms and all(t.scored_on == 333 for t in confirms)
    for c in confirms:
        assert trials[c.number - 1].stage == "retrain" and trials[c.number - 1].round == c.round
        assert trials[c.number - 1].nonzero == c.nonzero


def test_the_best_is_a_trained_model_within_delta_and_the_checkpoint_says_so(
        full_run: tuple[StateRecorder, SearchResult], small_model_weights: bytes,
        small_arrays: dict[str, np.ndarray]) -> None:
    recorder, result = full_run
    best = result.best
    assert best.stage in ("adjust", "retrain", "confirm") and best.feasible
    assert best.accuracy_drop is not None and best.accuracy_drop <= 0.02
    assert best.compression_ratio is not None and best.compression_ratio > 1.5
    # the end of a retraining attempt confirmed within δ on the hold-out beats every other model
    ends = [t for t in recorder.written if t.stage == "confirm" and t.feasible]
    assert ends, "no attempt was confirmed: the test shows nothing"
    assert best.number == ends[0].number and best.stage == "confirm"
    # the figures come from the checkpoint's own tensors, on the images the drop is reported on:
    # the held-out third (numpy's default_rng(1) permutation of the validation positions)
    params = result.pruned.params
    assert sum(int(torch.count_nonzero(t)) for t in params.values()) == best.nonzero
    splits = split_arrays(small_arrays, {})
    model = zoo.build(get_architecture("lenet-300-100")).eval()
    held = torch.from_numpy(np.sort(np.random.default_rng(1).permutation(1000)[:333]))
    steer = torch.from_numpy(np.setdiff1d(np.arange(1000), held.numpy()))
    x, y = ((splits.x_val[held], splits.y_val[held]) if best.stage == "confirm"
            else (splits.x_val[steer], splits.y_val[steer]))
    assert accuracy(model, params, x, y) == best.val_accuracy
    assert accuracy(model, params, splits.x_test, splits.y_test) == result.test_accuracy
    # feasible means δ (2 %) everywhere; a round's search steers by its own tolerance (3 %),
    # measured against the model the round starts from on the images candidates are scored on
    # (1,000 training images): in round 0, the reference
    current = accuracy(model, safetensors.torch.load(small_model_weights),
                       *_search_images(small_arrays))
    checked = 0
    for t in recorder.written:
        assert t.accuracy_drop is not None and t.val_accuracy is not None
        assert t.feasible == (t.accuracy_drop <= 0.02)
        if t.stage == "search" and t.round == 0 and abs(current - t.val_accuracy - 0.03) > 1e-9:
            assert (t.objective <= 0) == (current - t.val_accuracy <= 0.03), (t, current)
            checked += 1
    assert checked >= 6


def test_retraining_attempts_start_from_ever_larger_adjusted_models(
        full_run: tuple[StateRecorder, SearchResult], small_model_weights: bytes,
        small_arrays: dict[str, np.ndarray]) -> None:
    recorder, _ = full_run

    def attempts(trials: list[Evaluated], rounds: int = 3) -> dict[int, list[Evaluated]]:
        out: dict[int, list[Evaluated]] = {}
        for t in trials:
            if t.stage == "retrain":
                out.setdefault(t.round - rounds, []).append(t)
        return out

    def size_class(t: Evaluated, step: float) -> int:
        assert t.nonzero
        return math.floor(math.log(t.total / t.nonzero) / math.log(step) + 1e-9)

    def starts(trials: list[Evaluated], tolerance: float, step: float) -> list[Evaluated]:
        """The smallest adjusted model within the tolerance of each size class, highest first."""
        within = [t for t in trials if t.stage == "adjust" and t.accuracy_drop is not None
                  and t.accuracy_drop <= tolerance]
        assert within, "no adjusted model within the tolerance: the test shows nothing"
        best: dict[int, Evaluated] = {}
        for t in within:
            c = size_class(t, step)
            if c not in best or (t.nonzero or 0) < (best[c].nonzero or 0):
                best[c] = t
        return [best[c] for c in sorted(best, reverse=True)]

    # attempt 0: the smallest within retrain_drop (1.5 %); a second one only if the first was not
    # confirmed within δ
    got = attempts(recorder.written)
    assert {t.nonzero for t in got[0]} == {starts(recorder.written, 0.015, 1.25)[0].nonzero}
    confirmed = {t.round - 3: t for t in recorder.written if t.stage == "confirm"}
    # confirmed on the hold-out only if its end was within δ on the steering images
    assert (0 in confirmed) == got[0][-1].feasible
    assert (1 in got) == (not (0 in confirmed and confirmed[0].feasible))
    # rounds that prune past δ with no adjusting, and a retraining too gentle to win it back:
    # every attempt fails, each from the smallest model of the next size class down (steps of 2×)
    strict = StateRecorder()
    fallback = _run(small_model_weights, small_arrays, strict,
         _spec(max_accuracy_drop=0.0, olmp={**SCHEDULE, "rounds": 4, "adjust_iterations": 0,
                                            "search_drop": 0.3, "search_span": 4,
                                            "retrain_lr": 1e-7, "retrain_drop": 0.06,
                                            "retrain_step": 2.0}))
    got = attempts(strict.written, rounds=4)
    ladder = starts(strict.written, 0.06, 2.0)[:2]
    assert len(ladder) == 2, "the schedule made one size class only: the test shows nothing"
    confirmed = {t.round - 4: t for t in strict.written if t.stage == "confirm"}
    assert not any(c.feasible for c in confirmed.values()) and set(got) == {0, 1}
    assert set(confirmed) == {i for i in got if got[i][-1].feasible}
    assert [{t.nonzero for t in got[i]} for i in (0, 1)] == [{s.nonzero} for s in ladder]
    assert size_class(ladder[0], 2.0) > size_class(ladder[1], 2.0)
    # neither was confirmed within δ = 0: no other model (each steered the job on the images it
    # was scored on) is handed back, only the reference
    assert fallback.best.stage == "reference" and fallback.best.number == 0
    # without a hold-out, the smallest feasible model of any other kind is the fallback
    loose = StateRecorder()
    fallback = _run(small_model_weights, small_arrays, loose,
         _spec(max_accuracy_drop=0.0, olmp={**SCHEDULE, "adjust_iterations": 0, "search_drop": 0.3,
                                            "search_span": 4, "retrain_lr": 1e-7,
                                            "retrain_drop": 0.06, "confirm_fraction": 0}))
    ends = [t for t in loose.written if t.stage == "retrain"]
    if not any(t.feasible for t in ends[-1:]):
        feasible = [t for t in loose.written if t.feasible and t.stage != "search"]
        assert fallback.best.number == min(feasible, key=lambda t: (t.nonzero, t.number)).number


def test_biases_are_pruned_with_their_layer_s_threshold(
        full_run: tuple[StateRecorder, SearchResult], small_model_weights: bytes,
        small_arrays: dict[str, np.ndarray]) -> None:
    _, result = full_run
    params = result.pruned.params
    biases = {n: t for n, t in params.items() if n.endswith(".bias")}
    # a unit whose weights all went loses its bias too; biases are counted in every figure
    assert sum(int((t == 0).sum()) for t in biases.values()) > 0
    assert set(result.thresholds) >= set(biases)
    for name in biases:
        assert result.thresholds[name] == result.thresholds[name.replace(".bias", ".weight")]
    # and with prune_biases off, every bias stays
    off = _run(small_model_weights, small_arrays, StateRecorder(),
               _spec(olmp={**SCHEDULE, "prune_biases": False}))
    assert all(int((t == 0).sum()) == 0 for n, t in off.pruned.params.items() if n.endswith(".bias"))


def test_same_spec_and_seed_give_the_same_job(full_run: tuple[StateRecorder, SearchResult],
                                              small_model_weights: bytes,
                                              small_arrays: dict[str, np.ndarray]) -> None:
    recorder, result = full_run
    again = StateRecorder()
    second = _run(small_model_weights, small_arrays, again, _spec())
    assert _untimed(again.written) == _untimed(recorder.written)
    for n, t in result.pruned.params.items():
        assert torch.equal(t, second.pruned.params[n])
    other = StateRecorder()
    _run(small_model_weights, small_arrays, other, _spec(seed=3))
    assert _untimed(other.written) != _untimed(recorder.written)


@pytest.mark.parametrize("where", ["adjusting", "retraining"])
def test_a_job_resumed_from_saved_state_ends_exactly_like_the_uninterrupted_one(
        full_run: tuple[StateRecorder, SearchResult], small_model_weights: bytes,
        small_arrays: dict[str, np.ndarray], where: str) -> None:
    recorder, result = full_run
    # a state saved in the middle of round 1's adjusting, or of the retraining
    wanted = "adjust" if where == "adjusting" else "retrain"
    picks = [(n, data) for n, data in recorder.states
             if olmp_state.load(data)[1].phase == wanted and olmp_state.load(data)[1].phase_done > 0]
    assert picks, "the run saved no state there"
    n_before, data = picks[len(picks) // 2]
    # the crashed attempt had written a couple more populations after that save
    crash_at = [b for b in recorder.boundaries if b > n_before][:2][-1]
    stored = {t.number: t for t in recorder.written[:crash_at]}
    resumed = StateRecorder(stored)
    second = _run(small_model_weights, small_arrays, resumed, _spec(), data)
    # only what was not stored is scored, and it is what the uninterrupted run scored
    assert [t.number for t in resumed.written] == list(range(crash_at, len(recorder.written)))
    assert _untimed(resumed.written) == _untimed(recorder.written[crash_at:])
    assert second.best.number == result.best.number
    assert second.test_accuracy == result.test_accuracy
    for n, t in result.pruned.params.items():
        assert torch.equal(t, second.pruned.params[n])


def test_a_schedule_without_retraining_reports_an_adjusted_model(
        small_model_weights: bytes, small_arrays: dict[str, np.ndarray]) -> None:
    recorder = StateRecorder()
    result = _run(small_model_weights, small_arrays, recorder,
                  _spec(olmp={**SCHEDULE, "rounds": 2, "retrain_iterations": 0}))
    assert {t.stage for t in recorder.written} == {"reference", "search", "adjust"}
    assert result.best.stage in ("reference", "adjust") and result.best.feasible


def test_without_a_hold_out_the_end_of_an_attempt_decides_on_the_whole_split(
        small_model_weights: bytes, small_arrays: dict[str, np.ndarray]) -> None:
    recorder = StateRecorder()
    result = _run(small_model_weights, small_arrays, recorder,
                  _spec(olmp={**SCHEDULE, "confirm_fraction": 0}))
    trials = recorder.written
    assert "confirm" not in {t.stage for t in trials}
    assert all(t.scored_on == 1000 for t in trials if t.stage != "search")
    assert len(trials) <= planned_trials(_spec(olmp={**SCHEDULE, "confirm_fraction": 0})) == 34
    end = [t for t in trials if t.stage == "retrain" and t.round == 3][-1]
    if end.feasible:
        assert result.best.number == end.number


def test_a_hold_out_that_leaves_nothing_to_steer_on_fails_the_job_with_a_message(
        small_model_weights: bytes, small_arrays: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="1,000-image validation split leaves 1,000 images held out and 0 to steer on"):
        _run(small_model_weights, small_arrays, StateRecorder(),
             _spec(olmp={**SCHEDULE, "confirm_fraction": 0.9996}))


class ReferenceRecorder(StateRecorder):
    def set_reference(self, reference: dict[str, Any]) -> None:
        self.reference = reference


def test_round_searches_score_candidates_on_training_images_and_no_validation_image(
        small_model_weights: bytes, small_arrays: dict[str, np.ndarray]) -> None:
    # the default: a round's thresholds are chosen on a seeded subset of the training split, so a
    # mask is never chosen for how it does on the validation images that later judge it
    schedule = {**SCHEDULE, "rounds": 2, "retrain_iterations": 0}
    recorder = ReferenceRecorder()
    _run(small_model_weights, small_arrays, recorder, _spec(olmp=schedule))
    ref = recorder.reference
    assert ref["search_split"] == "train" and ref["scored_on"] == 1000
    arch = get_architecture("lenet-300-100")
    weights = safetensors.torch.load(small_model_weights)
    assert ref["scored_val_accuracy"] == pytest.approx(
        accuracy(zoo.build(arch).eval(), weights, *_search_images(small_arrays)))
    assert ref["scored_val_accuracy"] != pytest.approx(ref["val_accuracy"])
    searched = [t for t in recorder.written if t.stage == "search"]
    assert searched and all(t.scored_on == 1000 for t in searched)

    # the validation labels shuffled: every search candidate and every mask is the same; only
    # the scorings of whole models (on validation images) change
    shuffled = dict(small_arrays)
    shuffled["y_val"] = np.random.default_rng(0).permutation(small_arrays["y_val"])
    other = ReferenceRecorder()
    _run(small_model_weights, shuffled, other, _spec(olmp=schedule))
    for a, b in zip(recorder.written, other.written, strict=True):
        assert a.stage == b.stage
        if a.stage == "search":
            assert (a.candidate, a.val_accuracy, a.nonzero) == (b.candidate, b.val_accuracy,
                                                                b.nonzero)
        else:
            assert a.nonzero == b.nonzero
    adjusted = [(a.val_accuracy, b.val_accuracy)
                for a, b in zip(recorder.written, other.written, strict=True) if a.stage == "adjust"]
    assert len(adjusted) == 2 and all(x != y for x, y in adjusted)

    # the previous rule, on request: candidates scored on a subset of the steering images
    steering = ReferenceRecorder()
    _run(small_model_weights, small_arrays, steering,
         _spec(olmp={**schedule, "search_images": "steering"}))
    assert "search_split" not in steering.reference
    assert steering.reference["scored_on"] == 667  # the whole steering part (1,000 − 333)
