"""Method `magnitude`: one-shot per-layer magnitude thresholds searched under the accuracy
constraint (workers.methods.magnitude)."""

from core.methods import MethodInfo

METHOD = MethodInfo(
    name="magnitude",
    summary="one-shot per-layer magnitude thresholds, searched under the accuracy constraint",
    worker="workers.methods.magnitude",
    rank=0,
)
