"""``weam_ds.train`` with a fault injected into one rank, for tests of how the job fails. Everything else is
the real trainer.

- $SLOW_RANK, $SLOW_TAG, $SLOW_MARK, $SLOW_SECONDS: that rank, before writing an optimizer-state file of
  checkpoint $SLOW_TAG, writes its pid to $SLOW_MARK and sleeps (so that a test can kill it mid-save).
- $RAISE_RANK, $RAISE_STEP: that rank raises an error once it has taken step $RAISE_STEP, while the
  others go on into their next collective.
"""
import gc

gc.disable()  # as weam_ds.train does for a rank started as ``python -m weam_ds.train``, until its trainer is built

import os
import sys
import time
from pathlib import Path

import torch

import weam_ds.train
from weam_ds.train import main

RANK = os.environ.get("RANK")

if RANK == os.environ.get("SLOW_RANK"):
    _save = torch.save

    def _slow_save(obj, f, *args, **kwargs):
        name = str(f)
        if "optim_states" in name and f"{os.sep}{os.environ['SLOW_TAG']}{os.sep}" in name:
            Path(os.environ["SLOW_MARK"]).write_text(str(os.getpid()))
            time.sleep(float(os.environ["SLOW_SECONDS"]))
        return _save(obj, f, *args, **kwargs)

    torch.save = _slow_save  # DeepSpeed's checkpoint engine calls torch.save

if RANK == os.environ.get("RAISE_RANK"):
    _step = weam_ds.train.Monitor.step

    def _failing_step(self, step, *args, **kwargs):
        if step == int(os.environ["RAISE_STEP"]):
            raise OSError(f"injected failure on rank {RANK} at step {step}")
        return _step(self, step, *args, **kwargs)

    weam_ds.train.Monitor.step = _failing_step

sys.exit(main())
