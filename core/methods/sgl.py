"""Method `sgl`: every trial trains the model under MobilePrune's ℓ0 sparse group lasso (2022),
per-layer λ and η searched (workers.methods.sgl); options in `regularization`."""

from core.methods import MethodInfo

METHOD = MethodInfo(
    name="sgl",
    summary="training trials under an ℓ0 sparse group lasso, per-layer λ and η searched",
    worker="workers.methods.sgl",
    trials="distributed",
    multi_objective=True,
    artifacts=("pruned", "compact"),
    rank=3,
)
