"""A test-only method, `test-uniform`: every prunable tensor keeps the same whole percentage of
its largest weights, an integer variable the job's optimizer searches (workers.search.space). It exists to show (and test) the
two files a new method consists of: its registry entry (`INFO`, in core.methods' terms) and its
worker module (this file's `run`, the workers.methods.Method protocol)."""

from __future__ import annotations

from core.methods import MethodInfo
from workers.methods import MethodJob
from workers.models.masking import MagnitudePruner
from workers.runtime.evaluation import accuracy
from workers.search.space import Integer, Space, SpaceOptimizer
from workers.search.trials import CandidateScorer, Evaluated, Reference, SearchResult, better

INFO = MethodInfo(name="test-uniform", summary="the same keep ratio in every layer (a test)",
                  worker=__name__)
SPACE = Space((Integer(1, 100),))  # percent of every tensor kept


def run(job: MethodJob) -> SearchResult:
    pruner = MagnitudePruner(job.arch, job.params, job.spec.search.prune_biases)
    scorer = CandidateScorer(pruner, job.spec.max_accuracy_drop)
    x, y = job.splits.x_val, job.splits.y_val
    ref_val = accuracy(job.model, pruner.params, x, y)
    reference = Reference(val_accuracy=ref_val, total_parameters=pruner.total,
                          scored_val_accuracy=ref_val, scored_on=int(y.shape[0]))
    job.recorder.set_reference(reference.doc())
    best: Evaluated | None = None
    opt = SpaceOptimizer(job.spec.optimizer, SPACE, [100], seed=job.spec.seed,
                         budget=job.spec.budget.trials, population=1)
    for number in range(job.spec.budget.trials):
        candidate = opt.ask()
        percent = int(candidate[0])
        pruned = pruner.apply([percent / 100] * pruner.dims)
        e = scorer.evaluated(number, "uniform", candidate, pruned,  # type: ignore[arg-type]
                             accuracy(job.model, pruned.params, x, y), reference.val_accuracy,
                             int(y.shape[0]), 0.0)
        opt.tell(candidate, e.objective)
        if e.feasible and better(e, best):
            best = e
        job.recorder.write([e], trials_done=number + 1, stage="uniform", best=best)
    job.recorder.flush()
    assert best is not None, "keeping every weight is within any δ"
    kept = int(best.candidate[0]) / 100
    pruned = pruner.apply([kept] * pruner.dims)
    xt, yt = job.splits.x_test, job.splits.y_test
    reference.test_accuracy = accuracy(job.model, pruner.params, xt, yt)
    return SearchResult(best=best, pruned=pruned, reference=reference,
                        test_accuracy=accuracy(job.model, pruned.params, xt, yt),
                        thresholds={n: pruner.threshold(n, kept) for n in pruner.names})
