"""The job page's figures (best-so-far steps, Pareto front, rounds, timing) and its SVG charts."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from service import charts
from service.job_figures import convergence, pareto_front, rounds, stages, thinned, timing
from service.job_page import TableState
from store.records import TrialPoint


def _point(n: int, ratio: float | None, acc: float | None, feasible: bool = True, stage: str = "search",
           round_: int = 0) -> TrialPoint:
    return TrialPoint(number=n, stage=stage, round=round_, val_accuracy=acc,
                      accuracy_drop=None if acc is None else 0.9 - acc, scored_on=1000,
                      nonzero=None if ratio is None else int(1000 / ratio),
                      compression_ratio=ratio, feasible=feasible)


def _dominated(p: TrialPoint, others: list[TrialPoint]) -> bool:
    assert p.compression_ratio is not None and p.val_accuracy is not None
    return any(q.compression_ratio is not None and q.val_accuracy is not None
               and q.compression_ratio >= p.compression_ratio and q.val_accuracy >= p.val_accuracy
               and (q.compression_ratio > p.compression_ratio or q.val_accuracy > p.val_accuracy)
               for q in others)


@pytest.mark.parametrize("seed", range(5))
def test_the_pareto_front_is_every_undominated_trial(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # rounded, so that ties and exact duplicates occur
    pts = [_point(i, float(np.round(rng.uniform(1, 20), 1)), float(np.round(rng.uniform(0.8, 0.9), 2)))
           for i in range(300)] + [_point(300, None, None, feasible=False)]
    front = pareto_front(pts)
    expected = {p.number for p in pts if p.compression_ratio is not None and not _dominated(p, pts)}
    assert {p.number for p in front} == expected
    assert [p.compression_ratio for p in front] == sorted(p.compression_ratio for p in front)


def test_convergence_steps_only_on_improvements_of_reportable_feasible_trials() -> None:
    pts = [_point(0, 1.0, 0.9, stage="reference"), _point(1, 50.0, 0.89, stage="search"),
           _point(2, 3.0, 0.7, feasible=False, stage="adjust"), _point(3, 2.0, 0.89, stage="adjust"),
           _point(4, 1.5, 0.89, stage="adjust"), _point(5, None, None, feasible=False, stage="adjust"),
           _point(6, 4.0, 0.88, stage="retrain")]
    # OLMP's one-shot search candidates are never its result
    assert [(s.number, s.ratio) for s in convergence(pts, "olmp")] == [(0, 1.0), (3, 2.0), (6, 4.0)]
    # other methods report from every stage
    assert [(s.number, s.ratio) for s in convergence(pts, "magnitude")] == [(0, 1.0), (1, 50.0)]


def test_rounds_stages_and_thinning() -> None:
    pts = [_point(i, 1.0 + i, 0.9, round_=i // 10, stage="search" if i % 10 else "adjust")
           for i in range(30)]
    assert [(r.number, r.first, r.last, r.trials) for r in rounds(pts)] == [
        (0, 0, 9, 10), (1, 10, 19, 10), (2, 20, 29, 10)]
    assert stages(pts) == ["adjust", "search"]
    many = [_point(i, 1.0 + i % 97, 0.85) for i in range(10_000)]
    kept = thinned(many, keep={5, 9_999}, cap=1_000)
    assert 900 <= len(kept) <= 1_000 and {5, 9_999} <= {p.number for p in kept}
    assert thinned(many, keep={5}, cap=1_000) == thinned(many, keep={5}, cap=1_000)
    assert len(thinned(pts, keep=set(), cap=1_000)) == 30


def test_timing_estimates_the_rest_at_the_mean_pace() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    now = start + timedelta(seconds=100)
    running = timing("running", start, None, now, done=25, total=100)
    assert running.elapsed_s == 100 and running.remaining_s == pytest.approx(300)
    done = timing("succeeded", start, start + timedelta(seconds=40), now, done=100, total=100)
    assert done.elapsed_s == 40 and done.remaining_s is None
    assert timing("queued", None, None, now, 0, 100).elapsed_s is None


def _svg(markup: str) -> ET.Element:
    return ET.fromstring(markup)  # well-formed XML, or this raises


def test_the_scatter_marks_every_trial_with_its_numbers() -> None:
    pts = [_point(0, 1.0, 0.90), _point(1, 5.0, 0.89), _point(2, 4.0, 0.70, feasible=False),
           _point(3, 3.0, 0.895, stage="rescore"), _point(4, 600.0, 0.10, feasible=False)]
    front = pareto_front(pts)
    root = _svg(charts.scatter("s", pts, front, ["search", "rescore"], 0.9, 0.01, None, 0.6))
    marks = {int(e.get("data-trial", -1)): e for e in root.iter() if e.get("data-trial")}
    assert set(marks) == {0, 1, 2, 3, 4}
    assert marks[2].get("class") == "pt infeasible" and marks[1].get("data-feasible") == "true"
    assert float(marks[1].get("data-ratio", 0)) == 5.0 and float(marks[1].get("data-accuracy", 0)) == 0.89
    assert {n for n, e in marks.items() if "pareto" in (e.get("class") or "")} == {p.number for p in front}
    assert "clipped" in (marks[4].get("class") or "") and "clipped" not in (marks[1].get("class") or "")
    assert marks[3].tag.endswith("rect")  # the second stage's shape
    delta = [e for e in root.iter() if e.get("data-line") == "delta"]
    assert len(delta) == 1 and float(delta[0].get("data-accuracy", 0)) == pytest.approx(0.89)
    assert root.get("role") == "img" and root.get("aria-labelledby") == "s-title s-desc"


def test_convergence_and_layer_charts() -> None:
    steps = convergence([_point(0, 1.0, 0.9), _point(3, 2.5, 0.89), _point(7, 6.0, 0.88)], "magnitude")
    root = _svg(charts.convergence("c", steps, 9, 99, rounds([_point(0, 1.0, 0.9)]), (7, 6.0)))
    assert [int(e.get("data-trial", -1)) for e in root.iter() if e.get("class") == "step"] == [0, 3, 7]
    assert [e.get("data-trial") for e in root.iter() if e.get("class") == "reported"] == ["7"]
    bars = [charts.LayerBar("fc1.weight", 235_200, 0.05), charts.LayerBar("fc2.weight", 30_000, 0.5)]
    layers = _svg(charts.layers("l", bars))
    groups = [e for e in layers.iter() if e.get("class") == "layer"]
    assert [(g.get("data-layer"), g.get("data-parameters")) for g in groups] == [
        ("fc1.weight", "235200"), ("fc2.weight", "30000")]
    assert bars[0].kept == 11_760
    empty = _svg(charts.scatter("e", [], [], [], None, 0.01, None, None))
    assert "No scored trials yet." in "".join(empty.itertext())


def test_table_state_falls_back_to_defaults_on_unknown_values() -> None:
    s = TableState.parse({"sort": "ratio", "dir": "desc", "page": "3", "stage": "search"})
    assert (s.sort, s.desc, s.page, s.stage) == ("ratio", True, 3, "search")
    assert TableState.parse({"sort": "id; drop table", "page": "-1"}) == TableState()
    assert TableState.parse({"page": "9" * 30}).page == 1
    assert s.query(page=1) == "sort=ratio&dir=desc&stage=search"
