"""Which trials a job can report as its best, by method and stage.

A method records each trial with a stage (magnitude: calibrate, search, rescore; olmp: reference,
search, adjust, retrain). Most stages score candidates that could be the job's result. Some only
steer a search: OLMP's one-shot search candidates are scored before the training that every model
it reports went through, so their accuracy is not the accuracy of anything a user can download.
A method not listed here reports from every stage.
"""

from __future__ import annotations

STEERING_STAGES: dict[str, frozenset[str]] = {
    "olmp": frozenset({"search"}),
}


def reportable(method: str, stage: str) -> bool:
    return stage not in STEERING_STAGES.get(method, frozenset())
