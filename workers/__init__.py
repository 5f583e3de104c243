"""The worker process: claims jobs, runs searches on CUDA or CPU, writes trials and checkpoints."""
