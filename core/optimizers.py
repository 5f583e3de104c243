"""Optimizer names a job may ask for (the implementations live in workers.optimizers)."""

NEVERGRAD = ("NGOpt", "CMA", "OnePlusOne", "TwoPointsDE", "PSO", "DE", "RandomSearch")
OPTUNA = ("tpe", "cmaes", "random")

# `ncs`: Negatively Correlated Search (Tang, Yang & Yao 2016), the optimizer of OLMP; our own code.
OPTIMIZERS: tuple[str, ...] = (
    tuple(f"nevergrad:{n}" for n in NEVERGRAD) + tuple(f"optuna:{n}" for n in OPTUNA) + ("ncs",)
)
# magnitude: one-shot per-layer thresholds. olmp: OLMP's prune-and-adjust pipeline (thresholds
# searched every few thousand iterations of masked training whose pruned weights may recover).
METHODS: tuple[str, ...] = ("magnitude", "olmp")
