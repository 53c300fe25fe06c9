"""Turns (model, data, likelihood, kind) into per-layer statistics."""
