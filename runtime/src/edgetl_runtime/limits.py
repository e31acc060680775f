"""Limits a device states and enforces where data enters (a leaf module: anything may import it)."""

from __future__ import annotations

# Classes one head holds: its fit keeps (C, D) sums and (N, C) similarity matrices, and the rejection
# calibration (N, C) more; 10k enrolled classes (or a 40k-class shipped head) ran out of memory (11.9 GiB).
MAX_CLASSES = 4096
