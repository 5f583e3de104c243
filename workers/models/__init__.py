"""Models as torch: the architecture builders, magnitude masks, compaction, reference training."""
