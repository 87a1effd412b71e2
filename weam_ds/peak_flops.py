"""Dense bf16 peak TFLOP/s per GPU model (vendor data sheets, SXM parts without sparsity): the denominator of the
monitor's MFU and of the study plan's GPU-hours. Kept apart from torch, so that the launcher, which only reads
the table, starts without importing it."""
from __future__ import annotations

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}
