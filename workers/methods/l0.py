"""Method `l0` (core.methods.l0): training trials under workers.methods.regularized's `l0` regularizer."""

from workers.methods.regularization import Regularized

_METHOD = Regularized("l0")
run = _METHOD.run
train_trial = _METHOD.train_trial
trial_pruner = _METHOD.trial_pruner
hold_out = _METHOD.hold_out
