"""Device mesh and shardings; multi-process start-up, agreement, preemption;
gradient accumulation over microbatches."""
