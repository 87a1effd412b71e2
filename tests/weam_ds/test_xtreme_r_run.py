"""Zero-shot fine-tune → predict → score with a tiny model on task data in the official layout."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer
from xtreme_fixtures import write_qa, write_tatoeba, write_xcopa, write_xtreme

from weam_ds.presets import build_model
from weam_ds.xtreme_r import metrics
from weam_ds.xtreme_r.run import run
from weam_ds.xtreme_r.score import ScoreError, read_lines, read_tags

RECIPE = "learning_rate: 1.0e-3\nepochs: 2\nbatch_size: 8\nmax_length: 32\n"


@pytest.fixture(scope="module")
def setup(small_dataset, tmp_path_factory):
    dataset, _, _ = small_dataset
    tmp = tmp_path_factory.mktemp("xtreme")
    tok = AutoTokenizer.from_pretrained(str(dataset / "tokenizer"))
    torch.manual_seed(0)
    model = tmp / "model"
    build_model("tiny", len(tok), pad_token_id=tok.pad_token_id).save_pretrained(str(model))
    tok.save_pretrained(str(model))
    recipes = tmp / "recipes"
    recipes.mkdir()
    for task in ("xnli", "panx", "xquad", "mlqa", "xcopa"):
        (recipes / f"{task}.yaml").write_text(RECIPE + ("doc_stride: 8\n" if task in ("xquad", "mlqa") else ""))
    return tmp, model, recipes


def test_classification_and_tagging_end_to_end(setup):
    tmp, model, recipes = setup
    data = write_xtreme(tmp / "data", tagged_test=False)  # tagging test labels withheld, as the download does
    out = tmp / "run"
    results = run(model, data, ["xnli", "panx"], out, seeds=[1, 2], recipes=recipes, languages=["en", "de", "fr"])

    xnli = json.loads((out / "xnli" / "seed1" / "result.json").read_text())
    assert xnli["split"] == "test" and xnli["recipe"]["epochs"] == 2
    for lang in ("en", "de", "fr"):
        predicted = read_lines(out / "xnli" / "seed1" / "predictions" / "xnli" / f"test-{lang}.tsv")
        gold = read_lines(out / "labels" / "test" / "xnli" / f"test-{lang}.tsv")
        assert len(predicted) == len(gold) == 27 and set(predicted) <= {"entailment", "neutral", "contradiction"}
        assert xnli["scores"]["accuracy"][lang] == pytest.approx(metrics.accuracy(gold, predicted)["accuracy"])

    panx = json.loads((out / "panx" / "seed2" / "result.json").read_text())
    assert panx["split"] == "dev"  # no test tags: the dev sets were scored, and the result says so
    predicted = read_tags(out / "panx" / "seed2" / "predictions" / "panx" / "test-de.tsv")
    gold = read_tags(out / "labels" / "dev" / "panx" / "test-de.tsv")
    assert [len(s) for s in predicted] == [len(s) for s in gold]
    assert panx["scores"]["f1"]["de"] == pytest.approx(metrics.tagging(gold, predicted)["f1"])

    agg = results["xnli"]
    seeds = [json.loads((out / "xnli" / f"seed{s}" / "result.json").read_text())["scores"]["accuracy"] for s in (1, 2)]
    assert agg["mean"]["fr"] == pytest.approx((seeds[0]["fr"] + seeds[1]["fr"]) / 2)
    assert agg["std"]["fr"] == pytest.approx(abs(seeds[0]["fr"] - seeds[1]["fr"]) / 2)
    gap = sum(s["en"] - (s["de"] + s["fr"]) / 2 for s in seeds) / 2
    assert agg["transfer_gap"] == pytest.approx(gap)
    assert "tagging" not in results  # udpos was not run, so no tagging category
    assert results["tasks_mean"] == pytest.approx((agg["avg_metric"] + results["panx"]["avg_metric"]) / 2)
    assert json.loads((out / "results.json").read_text())["panx"]["split"] == "dev"

    # Finished task/seed pairs are not redone.
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/result.json")}
    run(model, data, ["xnli", "panx"], out, seeds=[1, 2], recipes=recipes, languages=["en", "de", "fr"])
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/result.json")} == before
    # The command line does the same: nothing left to train, it aggregates and reports.
    cli = subprocess.run([sys.executable, "-m", "weam_ds.xtreme_r", "run", "--model", str(model), "--data", str(data),
                          "--tasks", "xnli,panx", "--out", str(out), "--seeds", "1,2", "--recipes", str(recipes),
                          "--languages", "en,de,fr"], capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "xnli     test accuracy" in cli.stdout and "panx     dev f1" in cli.stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/result.json")} == before


def test_missing_task_files_are_listed_in_one_message(setup, tmp_path):
    _, model, recipes = setup
    data = write_xtreme(tmp_path / "data")
    (data / "xnli" / "test-de.tsv").unlink()
    (data / "xnli" / "dev-en.tsv").unlink()
    with pytest.raises(ScoreError, match=r"xnli needs .*dev-en.tsv, .*test-de.tsv"):
        run(model, data, ["xnli"], tmp_path / "out", seeds=[1], recipes=recipes, languages=["en", "de"])
    with pytest.raises(ScoreError, match="--languages: none of xcopa's"):
        run(model, data, ["xcopa"], tmp_path / "out", seeds=[1], recipes=recipes, languages=["en"])
    with pytest.raises(ScoreError, match="mewslix not supported by run yet"):
        run(model, data, ["mewslix"], tmp_path / "out", seeds=[1], recipes=recipes)


def test_xcopa_multiple_choice_end_to_end(setup):
    tmp, model, recipes = setup
    data = write_xcopa(tmp / "copa")
    out = tmp / "copa-run"
    run(model, data, ["xcopa"], out, seeds=[1], recipes=recipes, languages=["it", "id"])
    result = json.loads((out / "xcopa" / "seed1" / "result.json").read_text())
    assert result["split"] == "test"
    assert set(result["scores"]["accuracy"]) == {"it", "id"}  # XCOPA has no English test set
    for lang in ("it", "id"):
        predicted = [json.loads(line)["label"] for line in
                     read_lines(out / "xcopa" / "seed1" / "predictions" / "xcopa" / f"test-{lang}.jsonl") if line]
        gold = [json.loads(line)["label"] for line in
                read_lines(out / "labels" / "test" / "xcopa" / f"test-{lang}.jsonl") if line]
        assert len(predicted) == len(gold) == 9 and set(predicted) <= {0, 1}
        assert result["scores"]["accuracy"][lang] == pytest.approx(metrics.accuracy(gold, predicted)["accuracy"])


def test_question_answering_end_to_end(setup):
    tmp, model, recipes = setup
    data = write_qa(tmp / "qa")
    out = tmp / "qa-run"
    results = run(model, data, ["xquad", "mlqa"], out, seeds=[3], recipes=recipes, languages=["en", "de"])
    for task, metric in (("xquad", metrics.squad), ("mlqa", metrics.mlqa)):
        result = json.loads((out / task / "seed3" / "result.json").read_text())
        assert result["split"] == "test"
        for lang in ("en", "de"):
            answers = json.loads((out / task / "seed3" / "predictions" / task / f"test-{lang}.json").read_text())
            gold = json.loads((out / "labels" / "test" / task / f"test-{lang}.json").read_text())["data"]
            contexts = {qa["id"]: p["context"] for a in gold for p in a["paragraphs"] for qa in p["qas"]}
            assert set(answers) == set(contexts)
            # Every answer is a span of its own context (or empty when no valid span was found).
            assert all(text in contexts[qid] for qid, text in answers.items())
            expected = metric(gold, answers, lang) if task == "mlqa" else metric(gold, answers)
            assert result["scores"]["f1"][lang] == pytest.approx(expected["f1"])
            assert result["scores"]["exact_match"][lang] == pytest.approx(expected["exact_match"])
        assert results[task]["metric"] == "f1"


def test_tatoeba_from_the_official_layout(setup):
    tmp, model, _ = setup
    data = write_tatoeba(tmp / "tatoeba-data")
    out = tmp / "tatoeba-run"
    results = run(model, data, ["tatoeba"], out, seeds=[1, 2], languages=["de", "fr"])
    one, two = (json.loads((out / "tatoeba" / f"seed{s}" / "result.json").read_text()) for s in (1, 2))
    assert one["scores"] == two["scores"] and one["layer"] == 2  # no training: the seed changes nothing
    predicted = read_lines(out / "tatoeba" / "seed1" / "predictions" / "tatoeba" / "test-de.tsv")
    assert len(predicted) == 27 and all(0 <= int(i) < 27 for i in predicted)
    hits = sum(int(i) == k for k, i in enumerate(predicted))
    assert one["scores"]["accuracy"]["de"] == pytest.approx(100 * hits / 27)
    assert results["tatoeba"]["std"]["de"] == 0.0


def test_fine_tuning_under_deepspeed_zero3(setup, tmp_path):
    tmp, model, recipes = setup
    data = write_xtreme(tmp_path / "data")
    out = tmp_path / "ds-run"
    cmd = [sys.executable, "-m", "weam_ds.xtreme_r", "run", "--model", str(model), "--data", str(data),
           "--tasks", "xnli", "--out", str(out), "--seeds", "1", "--recipes", str(recipes), "--languages", "en,de",
           "--deepspeed", "ds_configs/cpu.json"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "xnli" / "seed1" / "result.json").read_text())
    predicted = read_lines(out / "xnli" / "seed1" / "predictions" / "xnli" / "test-de.tsv")
    gold = read_lines(out / "labels" / "test" / "xnli" / "test-de.tsv")
    assert result["scores"]["accuracy"]["de"] == pytest.approx(metrics.accuracy(gold, predicted)["accuracy"])
