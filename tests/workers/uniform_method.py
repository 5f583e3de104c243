"""A test-only method, `test-uniform`: every prunable tensor keeps the same share of its largest
weights, tried from most to least pruned until one is within δ. It exists to show (and test) the
two files a new method consists of: its registry entry (`INFO`, in core.methods' terms) and its
worker module (this file's `run`, the workers.methods.Method protocol)."""

from __future__ import annotations

from core.methods import MethodInfo
from workers.methods import MethodJob
from workers.models.masking import MagnitudePruner
from workers.runtime.evaluation import accuracy
from workers.search.trials import CandidateScorer, Evaluated, SearchResult, better

INFO = MethodInfo(name="test-uniform", summary="the same keep ratio in every layer (a test)",
                  worker=__name__)
LOG_RATIOS = (-1.0, -0.6, -0.4, -0.2, 0.0)  # log10 keep ratios tried, most pruned first


def run(job: MethodJob) -> SearchResult:
    pruner = MagnitudePruner(job.arch, job.params, job.spec.search.prune_biases)
    scorer = CandidateScorer(pruner, job.spec.max_accuracy_drop)
    x, y = job.splits.x_val, job.splits.y_val
    reference = {"val_accuracy": accuracy(job.model, pruner.params, x, y),
                 "total_parameters": pruner.total}
    job.recorder.set_reference(reference)
    best: Evaluated | None = None
    for number, log_ratio in enumerate(LOG_RATIOS):
        candidate = [log_ratio] * pruner.dims
        pruned = pruner.apply([10.0**log_ratio] * pruner.dims)
        e = scorer.evaluated(number, "uniform", candidate, pruned,
                             accuracy(job.model, pruned.params, x, y), reference["val_accuracy"],
                             int(y.shape[0]), 0.0)
        if e.feasible and better(e, best):
            best = e
        job.recorder.write([e], trials_done=number + 1, stage="uniform", best=best)
    job.recorder.flush()
    assert best is not None, "keeping every weight is within any δ"
    pruned = pruner.apply([10.0**best.candidate[0]] * pruner.dims)
    xt, yt = job.splits.x_test, job.splits.y_test
    reference["test_accuracy"] = accuracy(job.model, pruner.params, xt, yt)
    return SearchResult(best=best, pruned=pruned, reference=reference,
                        test_accuracy=accuracy(job.model, pruned.params, xt, yt),
                        thresholds={n: pruner.threshold(n, 10.0**best.candidate[0])
                                    for n in pruner.names})
