"""Training: a run's configuration and its life.

config (one dataclass per concern and the named presets), trainer (the loop), run_state (what makes
a run repeatable), checkpoint and runs (what a run leaves on disk), distributed (torchrun),
lr_schedule, divergence, runlog (TensorBoard and metrics), progress.

May import: base, data, model, training.
"""
