"""Where a worker's computation runs: devices and GPU slots, heartbeats, stop signals, a job's data as tensors, scoring, masked SGD."""
