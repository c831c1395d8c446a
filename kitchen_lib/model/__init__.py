"""Model: tensors in, tensors out; no files, no datasets.

diffusion (noise schedules, forward noising, targets), samplers (DDPM, DDIM, ...: the reverse
process, one class each, in one registry, and SamplerConfig), layers and unet (the network),
conditioning (the network's way in for the action/joint vector and the learned "no action"),
guidance (classifier-free guidance on the actions: dropout in training, the guided network),
frame_model (network + diffusion + objective: the object training and inference hold).

May import: base, model.
"""
