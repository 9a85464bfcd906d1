"""Baseline embeddings to compare learned representations against (`mwmae.baselines.logmel`)."""
