"""Optimizer names a job may ask for (the implementations live in workers.search.optimizers)."""

NEVERGRAD = ("NGOpt", "CMA", "OnePlusOne", "TwoPointsDE", "PSO", "DE", "RandomSearch")
OPTUNA = ("tpe", "cmaes", "random", "nsgaii")
# Optimizers that return a Pareto front of compression against validation accuracy instead of one
# scalar objective.
MULTI_OBJECTIVE = ("optuna:nsgaii",)

# `ncs`: Negatively Correlated Search (Tang, Yang & Yao 2016), the optimizer of OLMP; our own code.
OPTIMIZERS: tuple[str, ...] = (
    tuple(f"nevergrad:{n}" for n in NEVERGRAD) + tuple(f"optuna:{n}" for n in OPTUNA) + ("ncs",)
)
# Optimizers of one scalar objective: every method takes these.
SCALAR_OPTIMIZERS: tuple[str, ...] = tuple(o for o in OPTIMIZERS if o not in MULTI_OBJECTIVE)
