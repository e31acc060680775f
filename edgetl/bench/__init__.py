"""Reproducible measurements (latency vs. the machine's limit); modules import torch lazily where they can."""
