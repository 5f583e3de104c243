"""Method `magnitude` (core.methods.magnitude): the one-shot threshold search of workers.search."""

from __future__ import annotations

from workers.methods import MethodJob
from workers.search import MagnitudeSearch, SearchResult


def run(job: MethodJob) -> SearchResult:
    return MagnitudeSearch(job.arch, job.model, job.params, job.splits, job.spec, job.recorder).run()
