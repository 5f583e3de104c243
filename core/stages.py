"""Which trials a job can report as its best, by method and stage.

A method records each trial with a stage (magnitude: calibrate, search, rescore; olmp: reference,
search, adjust, retrain, confirm). Most stages score candidates that could be the job's result.
Some only steer a search: OLMP's one-shot search candidates are scored before the training that
every model it reports went through, so their accuracy is not the accuracy of anything a user can
download. Each method declares its steering stages in its registry entry (core.methods).
"""

from __future__ import annotations

from core import methods


def steering(method: str) -> frozenset[str]:
    try:
        return methods.get(method).steering_stages
    except ValueError:  # a job stored by a method since removed: every stage counts
        return frozenset()


def reportable(method: str, stage: str) -> bool:
    return stage not in steering(method)
