"""Job plumbing: the worker loop, running a claimed job, its inputs, trial work items, checkpoint files."""
