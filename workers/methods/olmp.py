"""Method `olmp` (core.methods.olmp): OLMP's prune-and-adjust pipeline of workers.methods.olmp_search, with its
training state saved to the job and resumed from it."""

from __future__ import annotations

from workers.methods import MethodJob
from workers.methods.olmp_search import OlmpSearch
from workers.search.trials import SearchResult


def run(job: MethodJob) -> SearchResult:
    return OlmpSearch(job.arch, job.model, job.params, job.splits, job.spec, job.recorder,
                      job.state, state_seconds=job.settings.state_seconds).run()
