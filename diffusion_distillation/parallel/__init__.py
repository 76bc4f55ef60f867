"""Device mesh and shardings; multi-process start-up, agreement, preemption."""
