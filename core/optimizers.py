"""Optimizer names a job may ask for (the implementations live in workers.optimizers)."""

NEVERGRAD = ("NGOpt", "CMA", "OnePlusOne", "TwoPointsDE", "PSO", "DE", "RandomSearch")
OPTUNA = ("tpe", "cmaes", "random")

OPTIMIZERS: tuple[str, ...] = tuple(f"nevergrad:{n}" for n in NEVERGRAD) + tuple(
    f"optuna:{n}" for n in OPTUNA
)
METHODS: tuple[str, ...] = ("magnitude",)
