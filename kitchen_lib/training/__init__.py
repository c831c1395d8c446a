"""Training: a run's configuration and its life.

config (one dataclass per concern and the named presets), trainer (the loop), validation (what
a run measures on its validation episodes as it trains), run_checkpoints
(the Trainer's state_dict/load_state_dict and checkpoint writing), given_model (checking a model
handed to the Trainer against its config), batches (the batches a run reads, moved to the device
in one place), run_state (what makes a run repeatable), checkpoint (the checkpoint schema) and
runs (what a run leaves on disk), distributed (torchrun), interrupt (Ctrl-C and SIGTERM), lr_schedule, divergence, runlog
(TensorBoard and metrics), progress.

May import: base, data, model, training.
"""
