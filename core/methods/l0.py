"""Method `l0`: every trial trains the model under hard-concrete L0 gates (Louizos et al. 2018)
whose per-layer strengths are searched (workers.methods.l0)."""

from core.methods.regularization import regularized

METHOD = regularized("l0", "training trials under hard-concrete L0 gates, per-layer λ searched",
                     rank=2)
