"""Where olmp's retraining attempts start: a ladder of adjusted models, one per size class.

An adjusted model within `retrain_drop` is offered to the ladder after its round. Size classes are
powers of `retrain_step` in compression ratio; the ladder keeps the smallest model of each of the
`slots` highest classes, highest first, so that each attempt after the first starts from a model
about `retrain_step`× larger than the one before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

State = TypeVar("State")
Meta = dict[str, Any]


def size_class(nonzero: int, total: int, step: float) -> int:
    return math.floor(math.log(total / nonzero) / math.log(step) + 1e-9)


def offer(rungs: list[tuple[Meta | None, State | None]], number: int, nonzero: int, total: int,
          step: float, slots: int, state: Callable[[], State]
          ) -> list[tuple[Meta | None, State | None]] | None:
    """The ladder with trial `number` (its model's state taken by calling `state`, only if it
    is kept), or None when it does not make the ladder."""
    cls = size_class(nonzero, total, step)
    kept = [(m, st) for m, st in rungs if m is not None and st is not None]
    same = [i for i, (m, _) in enumerate(kept) if m["class"] == cls]
    if same and nonzero >= kept[same[0]][0]["nonzero"]:
        return None
    if not same and len(kept) >= slots and cls <= min(m["class"] for m, _ in kept):
        return None
    entry = ({"number": number, "nonzero": nonzero, "class": cls}, state())
    if same:
        kept[same[0]] = entry
    else:
        kept.append(entry)
    kept = sorted(kept, key=lambda ms: -ms[0]["class"])[:slots]
    return [*kept, *[(None, None)] * (slots - len(kept))]
