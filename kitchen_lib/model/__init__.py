"""Model: tensors in, tensors out; no files, no datasets.

diffusion (noise schedules, forward noising, targets, SamplerConfig), samplers (DDPM, DDIM, ...:
the reverse process, one class each, in one registry), layers and unet (the network),
frame_model (network + diffusion + objective: the object training and inference hold).

May import: base, model.
"""
