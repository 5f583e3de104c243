"""Method `sgl` (core.methods.sgl): training trials under workers.methods.regularized's `sgl` regularizer."""

from workers.methods.regularization import Regularized

_METHOD = Regularized("sgl")
run = _METHOD.run
train_trial = _METHOD.train_trial
trial_pruner = _METHOD.trial_pruner
hold_out = _METHOD.hold_out
