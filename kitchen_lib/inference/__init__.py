"""Inference: using a trained run.

predictor (a checkpoint loaded for prediction on uint8 frames), evaluate (held-out scores against
the baselines), rollout (predictions fed back, step after step), drive (a live env and the model's dream of it,
under the same commands), commands (the hand commands that drive it), metrics, baselines.

May import: base, data, model, training, inference.
"""
