"""The objective under DeepSpeed ZeRO-3 on CPU (gloo): partitioned construction, the decoder still tied
to the embeddings, and the prior-attention parameters (used inside their module's forward) trained."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port


@pytest.mark.slow
def test_weam_trains_under_zero3_with_tied_decoder():
    script = Path(__file__).with_name("zero3_objective_run.py")
    run = subprocess.run([sys.executable, str(script), str(free_port())], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["partitioned"], "the model was not built partitioned (zero.Init via HfDeepSpeedConfig)"
    assert result["tied"]
    losses = result["losses"]
    assert losses[-1][0] < losses[0][0] and losses[-1][1] < losses[0][1]
    assert all(c > 0 for c in result["changed"])  # the exchange's query weights and the embeddings moved
    # Weight decay applies to the weight matrices even though ZeRO-3 has flattened them into shards.
    assert result["decayed_matrices"] > 0 and result["decayed_vectors"] == 0 and result["undecayed_matrices"] == 0
