"""``python -m launcher study plan`` on small studies of the project's own dataset: one line per cell whose
training FLOPs are the formula's, computed here from the presets' geometry and the manifest, a total equal to the
sum of the cells' printed values, a cell the memory planner refuses shown as refused with its reason, the
evaluation's fine-tunings from the official train-set sizes and the shipped recipes, and ``study run`` printing
the total before it submits. Nothing trains."""
from __future__ import annotations

import contextlib
import io
import re

import pytest
import yaml
from test_study import STEPS, study_file

from data_prep.manifest import read_manifest
from launcher.cli import main
from launcher.study_plan import COPA, MULTINLI, SIQA, SQUAD, plan_study
from weam_ds.peak_flops import PEAK_TFLOPS
from weam_ds.presets import PRESETS
from weam_ds.xtreme_r.recipe import RECIPES

MFU = 0.5


def launcher(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def non_embedding(preset: str) -> int:
    """A post-LN XLM-R encoder's parameters less its embedding tables: per layer q, k, v, o with biases, the
    feed-forward's two matrices with biases and two LayerNorms; the embeddings' LayerNorm once."""
    p = PRESETS[preset]
    h, f = p.hidden, p.ffn
    return p.layers * (4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h) + 2 * h


def per_token(preset: str, vocab: int, length: float, head_share: float) -> float:
    """6N for the weights, 12·L·S·H for attention over S tokens, 6·(V + H)·H at the share of tokens the MLM
    head predicts."""
    p = PRESETS[preset]
    return 6 * non_embedding(preset) + 12 * p.layers * length * p.hidden + 6 * head_share * (vocab + p.hidden) * p.hidden


def recipe(task: str) -> dict:
    return yaml.safe_load((RECIPES / f"{task}.yaml").read_text())


def table_rows(console: str) -> dict[str, list[str]]:
    """The plan's table: per cell (and total) its columns after the name."""
    lines = console.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("cell "))
    rows = {}
    for line in lines[start + 1:]:
        name, *columns = re.split(r"\s{2,}", line.strip())
        rows[name] = columns
        if name == "total":
            return rows
    raise AssertionError(f"no total line in:\n{console}")


def number(text: str) -> float:
    return float(text.replace(",", ""))


def test_a_study_plan_prices_each_cell_and_totals_them_and_marks_the_refused_cells(small_dataset, tmp_path):
    dataset, _, _ = small_dataset
    xtreme = tmp_path / "xtreme"  # the plan reads no task data: the official sizes stand for it
    xtreme.mkdir()
    path = study_file(tmp_path, dataset, "plan", **{
        "axes": {"model": ["tiny", "base"], "data.pairs": ["langs_1", "langs_2"], "objective.name": ["weam", "tlm"]},
        "evaluation": {"xtreme_r": {"data": str(xtreme), "tasks": ["xnli", "xcopa", "xquad", "mlqa", "tatoeba"],
                                    "seeds": [1, 2]}},
        "launch": {"backend": "local", "nproc_per_node": 1, "gpu_mem": "3GB", "gpu": "H100"}})
    code, console, _ = launcher("study", "plan", str(path), "--mfu", str(MFU))
    assert code == 1, console  # a cell is refused
    assert not (tmp_path / "plan").exists()  # planning writes nothing into the study directory

    # Each cell's training FLOPs: the formula on the presets' geometry and the manifest's train data.
    plan = plan_study(path, MFU)
    manifest = read_manifest(dataset)
    vocab = manifest["tokenizer"]["vocab_size"]
    subsets = {"langs_1": ["fr-en"], "langs_2": ["fr-en", "ja-en"]}
    assert len(plan.cells) == 8
    for cell in plan.cells:
        model, subset, objective = (re.search(rf"{key}=([^,]+)", cell.name)[1]
                                    for key in ("model", "languages", "objective"))
        train = [manifest["pairs"][pair]["splits"]["train"] for pair in subsets[subset]]
        tokens = sum(t["src_tokens"] + t["tgt_tokens"] for t in train)
        samples = sum(t["samples"] for t in train)
        expected_tokens = STEPS * 8 * tokens / samples  # 8 pairs a step on one rank
        head_share = 0.15 * (2 if objective == "weam" else 1)  # WEAM predicts as many again for XPRED
        assert cell.parameters == non_embedding(model)
        assert cell.tokens == pytest.approx(expected_tokens)
        assert cell.train_flops == pytest.approx(
            expected_tokens * per_token(model, vocab, tokens / (2 * samples), head_share))
        # Per seed: MultiNLI, SIQA then COPA (one sequence per choice), and one SQuAD model for XQuAD and MLQA;
        # Tatoeba fine-tunes nothing.
        units = [(MULTINLI, recipe("xnli"), 1), (SIQA, recipe("xcopa"), 3), (COPA, recipe("xcopa"), 2),
                 (SQUAD, recipe("xquad"), 1)]
        assert cell.eval_flops == pytest.approx(2 * sum(
            s.examples * r["epochs"] * choices * r["max_length"] * per_token(model, vocab, r["max_length"], 0)
            for s, r, choices in units))

    # One line per cell and a total equal to the sum of the printed cells; the refused cells marked, with why.
    rows = table_rows(console)
    assert set(rows) == {cell.name for cell in plan.cells} | {"total"}
    columns = {"steps": 0, "tokens": 1, "train FLOPs": 3, "train GPU-h": 4, "eval FLOPs": 6, "eval GPU-h": 7}
    for name, at in columns.items():
        printed = sum(number(row[at]) for cell, row in rows.items() if cell != "total")
        assert number(rows["total"][at]) == pytest.approx(printed, rel=1e-3), name
    assert number(rows["total"][0]) == 8 * STEPS
    for cell in plan.cells:
        hours = cell.train_flops / (MFU * PEAK_TFLOPS["H100"] * 1e12) / 3600
        assert number(rows[cell.name][4]) == pytest.approx(hours, rel=1e-3)
        assert rows[cell.name][5] == ("REFUSED" if "model=base" in cell.name else "fits")
    refused = console.split("refused by the memory planner")[1].splitlines()[1:]
    assert sorted(line.split(":")[0].strip() for line in refused) == sorted(
        cell.name for cell in plan.cells if "model=base" in cell.name)
    assert all("GPU needs" in line for line in refused)
    assert rows["total"][5] == "4 refused"


def test_study_run_prints_the_total_before_it_submits(small_dataset, tmp_path):
    dataset, _, _ = small_dataset
    path = study_file(tmp_path, dataset, "submitted", **{
        "launch": {"backend": "slurm", "nnodes": 1, "nproc_per_node": 1}})
    code, console, _ = launcher("study", "run", str(path), "--dry-run")
    assert code == 0, console
    plan = plan_study(path)
    first, second, *rest = console.splitlines()
    assert f"{plan.total_line()}" == f"{first}\n{second}"
    assert first.startswith(f"study plan: 4 cells, {4 * STEPS} steps")
    assert "no GPU (the jobs request none" in second  # a CPU cluster: no GPU-hours made up
    assert rest[0].startswith("# ") and rest[-1] == "launcher: dry run: nothing submitted"


@pytest.mark.parametrize("changes,args,message", [
    ({}, ["--mfu", "0"], "--mfu: 0.0 is not a share above 0 and at most 1"),
    ({"launch/gpu": "B9000"}, [], "launch.gpu: 'B9000' is not one of"),
    ({"evaluation": {"xtreme_r": {"data": ".", "tasks": ["bucc2018"]}}}, [],
     "evaluation.xtreme_r.tasks: 'bucc2018' is not a task weam_ds.xtreme_r runs"),
])
def test_a_bad_plan_request_is_a_one_line_error_naming_the_key(small_dataset, tmp_path, changes, args, message):
    dataset, _, _ = small_dataset
    path = study_file(tmp_path, dataset, "bad", **changes)
    code, _, err = launcher("study", "plan", str(path), *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
