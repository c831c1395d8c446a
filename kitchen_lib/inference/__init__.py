"""Inference: using a trained run.

predictor (a checkpoint loaded for prediction on uint8 frames), evaluate (held-out scores against
the baselines), rollout (predictions fed back, step after step), metrics, baselines.

May import: base, data, model, training, inference.
"""
