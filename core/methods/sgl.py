"""Method `sgl`: every trial trains the model under MobilePrune's ℓ0 sparse group lasso (2022),
per-layer λ and η searched (workers.methods.sgl)."""

from core.methods.regularization import regularized

METHOD = regularized("sgl", "training trials under an ℓ0 sparse group lasso, per-layer λ and η "
                     "searched", rank=3)
