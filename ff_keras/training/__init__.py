"""Training: losses, loss weighting, metrics, the multi-task trainer, staged runs, tracking, distribution."""
