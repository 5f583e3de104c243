"""A finished (or running) job's trials as an optuna study, so that optuna-dashboard opens it:
`thresher jobs export-optuna ID --out study.db`.

Params are the trial's search variables (named by layer where the candidate has one value per
layer with a keep ratio, else x0, x1, …), each a float distribution over the range the job's
trials took; the value is the objective the optimizers minimized (log10 of the kept fraction
when feasible, above 1 when not); user attributes carry the ratio, the accuracy and its drop,
the stage and round, feasibility and the per-layer keep ratios. A failed trial is FAIL, a pruned
one PRUNED. Needs optuna (the `worker` extra)."""

from __future__ import annotations

from pathlib import Path

from core.documents import JobDoc, TrialDoc


def names_of(trials: list[TrialDoc]) -> list[str]:
    width = max((len(t.candidate) for t in trials), default=0)
    layers = next((list(t.keep_ratios) for t in trials if t.keep_ratios), [])
    return layers if len(layers) == width else [f"x{i}" for i in range(width)]


def export(job: JobDoc, trials: list[TrialDoc], out: Path, study_name: str | None) -> str:
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = names_of(trials)
    values = {n: [float(t.candidate[i]) for t in trials if len(t.candidate) > i]
              for i, n in enumerate(names)}
    distributions = {n: FloatDistribution(min(v), max(v)) for n, v in values.items() if v}
    name = study_name or f"thresher-{job.id}"
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{out}", direction="minimize")
    for key, value in (("thresher_job", job.id), ("method", job.method),
                       ("optimizer", job.optimizer), ("max_accuracy_drop", job.max_accuracy_drop),
                       ("seed", job.seed)):
        study.set_user_attr(key, value)
    for t in trials:
        candidate = t.candidate
        metrics = t.metrics
        state = (TrialState.PRUNED if t.pruned else TrialState.FAIL
                 if t.error or metrics.objective is None else TrialState.COMPLETE)
        attrs = {"thresher_trial": t.number, "stage": t.stage, "round": t.round,
                 "feasible": t.feasible, "keep_ratios": t.keep_ratios,
                 **{k: getattr(metrics, k) for k in ("compression_ratio", "weights_ratio",
                                                     "val_accuracy", "accuracy_drop", "nonzero",
                                                     "total")}}
        if t.error:
            attrs["error"] = t.error
        study.add_trial(create_trial(
            state=state, value=metrics.objective if state == TrialState.COMPLETE else None,
            params={n: float(candidate[i]) for i, n in enumerate(names) if i < len(candidate)},
            distributions={n: distributions[n] for i, n in enumerate(names) if i < len(candidate)},
            user_attrs=attrs))
    return name
