"""The search engine: trial records and loops, the optimizers (nevergrad, optuna, NCS), optuna's trial pruners."""
