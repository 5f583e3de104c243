"""Method `l0`: every trial trains the model under hard-concrete L0 gates (Louizos et al. 2018)
whose per-layer strengths are searched (workers.methods.l0); options in `regularization`."""

from core.methods import MethodInfo

METHOD = MethodInfo(
    name="l0",
    summary="training trials under hard-concrete L0 gates, per-layer λ searched",
    worker="workers.methods.l0",
    trials="distributed",
    multi_objective=True,
    artifacts=("pruned", "compact"),
    rank=2,
)
