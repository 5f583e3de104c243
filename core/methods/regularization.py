"""What the registry entries of `l0` and `sgl` share: training trials distributed over workers,
multi-objective optimizers, compact downloads, options in the spec's `regularization`. This
module declares no method of its own."""

from core.methods import MethodInfo


def regularized(name: str, summary: str, rank: int) -> MethodInfo:
    return MethodInfo(name=name, summary=summary, worker=f"workers.methods.{name}",
                      trials="distributed", multi_objective=True, artifacts=("pruned", "compact"),
                      rank=rank)
