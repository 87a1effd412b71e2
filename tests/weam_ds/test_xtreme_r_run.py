"""Zero-shot fine-tune → predict → score with a tiny model on task data in the official layout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from transformers import AutoConfig
from conftest import free_port
from xtreme_fixtures import (ENTITIES, SIQA, SIQA_DEV, save_tiny_model, strip_answers, write_lareqa, write_mewslix,
                             write_qa, write_siqa, write_tatoeba, write_tydiqa, write_xcopa, write_xtreme)

from data_prep.typed_config import ConfigError
from weam_ds.xtreme_r import metrics
from weam_ds.xtreme_r.__main__ import main as xtreme_r_main
from weam_ds.xtreme_r.readers import read_siqa, read_squad, siqa_files
from weam_ds.xtreme_r.recipe import RECIPES
from weam_ds.xtreme_r.run import run
from weam_ds.xtreme_r.score import ScoreError, read_lines, read_tags
from weam_ds.xtreme_r.tatoeba import official_layer

RECIPE = "learning_rate: 1.0e-3\nepochs: 2\nbatch_size: 8\nmax_length: 32\n"


@pytest.fixture(scope="module")
def setup(small_dataset, tmp_path_factory):
    dataset, _, _ = small_dataset
    tmp = tmp_path_factory.mktemp("xtreme")
    model = save_tiny_model(dataset, tmp / "model")
    recipes = tmp / "recipes"
    recipes.mkdir()
    extra = {"xquad": "doc_stride: 8\n", "mlqa": "doc_stride: 8\n", "tydiqa": "doc_stride: 8\n",
             "lareqa": "query_length: 16\n",
             "xcopa": "first_stage: null\n"}  # COPA alone: the shipped recipe trains on SIQA first
    for task in ("xnli", "panx", "xquad", "mlqa", "tydiqa", "xcopa", "mewslix", "lareqa"):
        (recipes / f"{task}.yaml").write_text(RECIPE + extra.get(task, ""))
    return tmp, model, recipes


def test_classification_and_tagging_end_to_end(setup, capsys):
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
    assert "official_aggregates" not in results  # udpos was not run, so no tagging category
    assert results["mean_of_scored_tasks"] == pytest.approx((agg["avg_metric"] + results["panx"]["avg_metric"]) / 2)
    assert json.loads((out / "results.json").read_text())["panx"]["split"] == "dev"

    # Finished task/seed pairs are not redone.
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/result.json")}
    run(model, data, ["xnli", "panx"], out, seeds=[1, 2], recipes=recipes, languages=["en", "de", "fr"])
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/result.json")} == before
    # The command line does the same: nothing left to train, it aggregates and reports.
    capsys.readouterr()
    assert xtreme_r_main(["run", "--model", str(model), "--data", str(data), "--tasks", "xnli,panx", "--out", str(out),
                          "--seeds", "1,2", "--recipes", str(recipes), "--languages", "en,de,fr"]) == 0
    printed = capsys.readouterr().out
    assert "xnli     test accuracy" in printed and "panx     dev f1" in printed
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
    with pytest.raises(ScoreError, match="bucc2018 not supported by run yet"):
        run(model, data, ["bucc2018"], tmp_path / "out", seeds=[1], recipes=recipes)


def _siqa_recipes(folder):
    """A recipe folder whose xcopa.yaml trains in the official two stages (SIQA, then COPA), with gradient
    accumulation as the official recipe has."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "xcopa.yaml").write_text("learning_rate: 1.0e-3\nepochs: 2\nbatch_size: 8\n"
                                       "device_batch: 4\nmax_length: 32\nfirst_stage: siqa\n")
    return folder


def _xcopa_scored(out, result, langs, seed=1):
    """Predictions and labels are in the official layout and the result holds the scorer's accuracy."""
    assert result["split"] == "test" and set(result["scores"]["accuracy"]) == set(langs)
    for lang in langs:
        predicted = [json.loads(line)["label"] for line in
                     read_lines(out / "xcopa" / f"seed{seed}" / "predictions" / "xcopa" / f"test-{lang}.jsonl") if line]
        gold = [json.loads(line)["label"] for line in
                read_lines(out / "labels" / "test" / "xcopa" / f"test-{lang}.jsonl") if line]
        assert len(predicted) == len(gold) == 9 and set(predicted) <= {0, 1}
        assert result["scores"]["accuracy"][lang] == pytest.approx(metrics.accuracy(gold, predicted)["accuracy"])


def test_xcopa_siqa_then_copa_end_to_end(setup):
    tmp, model, _ = setup
    data = write_siqa(write_xcopa(tmp / "siqa-copa"))
    out = tmp / "siqa-copa-run"
    results = run(model, data, ["xcopa"], out, seeds=[1], recipes=_siqa_recipes(tmp / "recipes-siqa"),
                  languages=["it", "id"])
    result = json.loads((out / "xcopa" / "seed1" / "result.json").read_text())
    assert result["recipe"]["first_stage"] == "siqa"
    assert result["protocol"]["batch"] == {"effective": 8, "devices": 1, "device_batch": 4, "accumulation": 2}
    siqa, copa = result["stages"]
    assert {k: siqa[k] for k in ("stage", "from", "train", "dev", "train_examples", "dev_examples")} == {
        "stage": "siqa", "from": "model", "train": "siqa/train.jsonl", "dev": "siqa/dev.jsonl",
        "train_examples": len(SIQA) - SIQA_DEV, "dev_examples": SIQA_DEV}
    assert {k: copa[k] for k in ("stage", "from", "train", "dev", "train_examples", "dev_examples")} == {
        "stage": "copa", "from": "siqa", "train": "xcopa/train-en.jsonl", "dev": "xcopa/val-en.jsonl",
        "train_examples": 9, "dev_examples": 9}
    for stage in (siqa, copa):  # the official rule: the last weights of each stage
        assert stage["selection"]["rule"] == "last weights" and not stage["selection"]["evaluated"]
        assert stage["selection"]["kept_step"] == stage["selection"]["final_step"] > 0
    _xcopa_scored(out, result, ["it", "id"])
    assert results["xcopa"]["metric"] == "accuracy"
    assert not (out / "xcopa" / "seed1" / "checkpoints").exists()  # the SIQA-tuned weights went with them


def test_xcopa_copa_only_by_recipe(setup):
    """A recipe with first_stage: null trains on English COPA alone, and needs no siqa/ folder."""
    tmp, model, recipes = setup
    data = write_xcopa(tmp / "copa")
    assert not (data / "siqa").exists()
    out = tmp / "copa-run"
    run(model, data, ["xcopa"], out, seeds=[1], recipes=recipes, languages=["it", "id"])
    result = json.loads((out / "xcopa" / "seed1" / "result.json").read_text())
    assert result["recipe"]["first_stage"] is None
    assert [(s["stage"], s["from"], s["train"], s["train_examples"]) for s in result["stages"]] == [
        ("copa", "model", "xcopa/train-en.jsonl", 9)]
    _xcopa_scored(out, result, ["it", "id"])  # XCOPA has no English test set


def test_xcopa_shipped_recipe_needs_siqa(setup, tmp_path):
    """The shipped recipe is the official two-stage one: without siqa/ the run stops before training, naming
    every missing file and the way to COPA alone."""
    _, model, _ = setup
    data = write_xcopa(tmp_path / "data")
    out = tmp_path / "out"
    with pytest.raises(ScoreError, match=r"xcopa needs \S*siqa/socialIQa_v1\.4_trn\.jsonl, "
                                         r"\S*siqa/socialIQa_v1\.4_dev\.jsonl; SIQA.*download_siqa.*"
                                         r"socialiqa-train-dev\.zip.*first_stage: null"):
        run(model, data, ["xcopa"], out, seeds=[1], languages=["it"])
    write_siqa(data)
    (data / "siqa" / "dev-labels.lst").unlink()
    with pytest.raises(ScoreError) as missing:
        run(model, data, ["xcopa"], out, seeds=[1], languages=["it"])
    assert "needs " + str(data / "siqa" / "dev-labels.lst") + ";" in str(missing.value)
    assert not out.exists()

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "xcopa.yaml").write_text(RECIPE + "first_stage: swag\n")
    (recipes / "xnli.yaml").write_text(RECIPE + "first_stage: siqa\n")
    with pytest.raises(ConfigError, match=r"xcopa\.yaml: first_stage 'swag' \(expected siqa or null\)"):
        run(model, data, ["xcopa"], out, seeds=[1], recipes=recipes, languages=["it"])
    with pytest.raises(ConfigError, match=r"xnli\.yaml: first_stage 'siqa' \(expected null\)"):
        run(model, write_xtreme(tmp_path / "data"), ["xnli"], out, seeds=[1], recipes=recipes, languages=["en"])


def test_siqa_reader_pairs_labels_with_questions(tmp_path):
    data = write_siqa(tmp_path)
    train = read_siqa(data, "train")
    assert [r["label"] for r in train] == [row[-1] - 1 for row in SIQA[:-SIQA_DEV]]  # 1-based in the .lst
    assert train[0] == {"context": SIQA[0][0], "question": SIQA[0][1], "answerA": SIQA[0][2],
                        "answerB": SIQA[0][3], "answerC": SIQA[0][4], "label": 0}
    labels = data / "siqa" / "dev-labels.lst"
    labels.write_text("".join(f"{row[-1]}\n" for row in SIQA[-SIQA_DEV:-1]))
    with pytest.raises(ScoreError, match=rf"dev-labels\.lst: {SIQA_DEV - 1} labels, but \S*dev\.jsonl holds "
                                         rf"{SIQA_DEV} questions"):
        read_siqa(data, "dev")
    labels.write_text("1\n4\n2\n")
    with pytest.raises(ScoreError, match=r"dev-labels\.lst:2: label '4' \(expected 1, 2 or 3\)"):
        read_siqa(data, "dev")
    questions = data / "siqa" / "train.jsonl"
    lines = questions.read_text().splitlines()
    questions.write_text("\n".join(lines[:2] + ["{not json"] + lines[3:]) + "\n")
    with pytest.raises(ScoreError, match=r"train\.jsonl:3: not JSON"):
        read_siqa(data, "train")
    questions.write_text(json.dumps({"context": "c", "question": "q", "answerA": "a", "answerB": "b"}) + "\n")
    with pytest.raises(ScoreError, match=r"train\.jsonl:1: no answerC"):
        read_siqa(data, "train")


def test_siqa_xtreme_layout_reads_as_allenais(tmp_path):
    """XTREME's download_siqa layout (one file per split, the answer letter in ``correct``) gives the records
    AllenAI's layout gives; it is the one read when both are there."""
    xtreme, allenai = write_siqa(tmp_path / "xtreme", layout="xtreme"), write_siqa(tmp_path / "allenai")
    for split in ("train", "dev"):
        assert read_siqa(xtreme, split) == read_siqa(allenai, split)
    assert [r["label"] for r in read_siqa(xtreme, "dev")] == [row[-1] - 1 for row in SIQA[-SIQA_DEV:]]
    both = write_siqa(write_siqa(tmp_path / "both"), layout="xtreme")
    assert siqa_files(both, "train") == (both / "siqa" / "socialIQa_v1.4_trn.jsonl",)
    dev = xtreme / "siqa" / "socialIQa_v1.4_dev.jsonl"
    lines = dev.read_text().splitlines()
    second = json.loads(lines[1])
    dev.write_text("\n".join([lines[0], json.dumps({**second, "correct": "D"}), lines[2]]) + "\n")
    with pytest.raises(ScoreError, match=r"socialIQa_v1\.4_dev\.jsonl:2: correct 'D' \(expected A, B or C\)"):
        read_siqa(xtreme, "dev")
    del second["correct"]
    dev.write_text("\n".join([lines[0], json.dumps(second), lines[2]]) + "\n")
    with pytest.raises(ScoreError, match=r"socialIQa_v1\.4_dev\.jsonl:2: no correct \(expected context, .*correct\)"):
        read_siqa(xtreme, "dev")
    dev.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(ScoreError, match=r"socialIQa_v1\.4_dev\.jsonl:2: not JSON"):
        read_siqa(xtreme, "dev")


def test_xcopa_from_the_xtreme_download(setup):
    """As XTREME's download leaves it: SIQA in download_siqa's layout and every XCOPA test label set to 0. Both
    stages train, and the val sets, which keep their labels, are scored."""
    tmp, model, _ = setup
    data = write_siqa(write_xcopa(tmp / "xcopa-xtreme", languages=("en", "it"), test_labels=False), layout="xtreme")
    out = tmp / "xcopa-xtreme-run"
    run(model, data, ["xcopa"], out, seeds=[1], recipes=_siqa_recipes(tmp / "recipes-siqa-xtreme"), languages=["it"])
    result = json.loads((out / "xcopa" / "seed1" / "result.json").read_text())
    assert [(s["stage"], s["train"], s["dev"], s["train_examples"], s["dev_examples"]) for s in result["stages"]] == [
        ("siqa", "siqa/socialIQa_v1.4_trn.jsonl", "siqa/socialIQa_v1.4_dev.jsonl", len(SIQA) - SIQA_DEV, SIQA_DEV),
        ("copa", "xcopa/train-en.jsonl", "xcopa/val-en.jsonl", 9, 9)]
    assert result["split"] == "dev"
    predicted = [json.loads(line)["label"] for line in
                 read_lines(out / "xcopa" / "seed1" / "predictions" / "xcopa" / "test-it.jsonl") if line]
    gold = [json.loads(line)["label"] for line in
            read_lines(out / "labels" / "dev" / "xcopa" / "test-it.jsonl") if line]
    assert gold == [json.loads(line)["label"] for line in read_lines(data / "xcopa" / "val-it.jsonl") if line]
    assert len(set(gold)) == 2 and len(predicted) == len(gold)
    assert result["scores"]["accuracy"]["it"] == pytest.approx(metrics.accuracy(gold, predicted)["accuracy"])
    assert not (out / "labels" / "test").exists()


def test_question_answering_end_to_end(setup):
    tmp, model, recipes = setup
    data = write_tatoeba(write_qa(tmp / "qa"))
    shutil.copy(RECIPES / "tatoeba.yaml", recipes / "tatoeba.yaml")
    out = tmp / "qa-run"
    results = run(model, data, ["xquad", "mlqa", "tatoeba"], out, seeds=[3], recipes=recipes, languages=["en", "de"])
    # One English-SQuAD model serves XQuAD, MLQA and Tatoeba, as XTREME-R's scripts use it.
    squad = out / "squad" / "seed3" / "model"
    assert (squad / "config.json").is_file()
    tatoeba = json.loads((out / "tatoeba" / "seed3" / "result.json").read_text())
    assert tatoeba["encoder"] == "squad" and tatoeba["encoder_dir"] == str(squad)
    assert not any("raw" in d for d in tatoeba["protocol"]["differences"])
    raw = run(model, data, ["tatoeba"], tmp / "qa-raw-run", seeds=[3], recipes=recipes, languages=["de"],
              tatoeba_encoder="raw")
    raw_result = json.loads((tmp / "qa-raw-run" / "tatoeba" / "seed3" / "result.json").read_text())
    assert raw_result["encoder"] == "raw" and not (tmp / "qa-raw-run" / "squad").exists()
    assert any("raw" in d for d in raw_result["protocol"]["differences"]) and raw["tatoeba"]["scored"]
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
        assert results[task]["metric"] == "f1" and results[task]["avg_metric_is"] == "(exact_match + f1) / 2"
        scores = result["scores"]  # avg_metric is the official (EM + F1) / 2, named so
        assert scores["avg_metric"] == pytest.approx((scores["avg_exact_match"] + scores["avg_f1"]) / 2)
        assert results[task]["avg_metric"] == pytest.approx(scores["avg_metric"])
        assert result["english_model"] == str(squad)


def test_qa_with_the_answers_stripped(setup):
    """As XTREME's download leaves QA: every answer of XQuAD, of MLQA's test sets and of TyDiQA-GoldP's dev
    sets (the English one included) replaced by an empty one. MLQA scores its dev sets; XQuAD and TyDiQA
    write their predictions but are not scored, and TyDiQA keeps its last epoch."""
    tmp, model, recipes = setup
    data = write_tydiqa(write_qa(tmp / "qa-stripped", languages=("en", "de", "id")))
    for folder in (data / "xquad", data / "mlqa" / "MLQA_V1" / "test", data / "tydiqa" / "tydiqa-goldp-v1.1-dev"):
        strip_answers(folder)
    out = tmp / "qa-stripped-run"
    dev_de = data / "mlqa" / "MLQA_V1" / "dev" / "dev-context-de-question-de.json"
    dev_de.rename(dev_de.with_suffix(".bak"))
    with pytest.raises(ScoreError, match=r"mlqa: the test answers are withheld .*"
                                         r"missing: \S*dev-context-de-question-de\.json$"):
        run(model, data, ["mlqa"], out, seeds=[1], recipes=recipes, languages=["en", "de"])
    dev_de.with_suffix(".bak").rename(dev_de)

    results = run(model, data, ["xquad", "mlqa", "tydiqa"], out, seeds=[1], recipes=recipes,
                  languages=["en", "de", "id"])
    mlqa = json.loads((out / "mlqa" / "seed1" / "result.json").read_text())
    assert mlqa["split"] == "dev" and mlqa["selection"]["rule"] == "last weights"
    assert mlqa["english_model"] == str(out / "squad" / "seed1" / "model")  # shared with XQuAD
    for lang in ("en", "de"):
        gold = json.loads((out / "labels" / "dev" / "mlqa" / f"test-{lang}.json").read_text())["data"]
        assert gold == read_squad(data / "mlqa" / "MLQA_V1" / "dev" / f"dev-context-{lang}-question-{lang}.json")[1]
        answers = json.loads((out / "mlqa" / "seed1" / "predictions" / "mlqa" / f"test-{lang}.json").read_text())
        assert mlqa["scores"]["f1"][lang] == pytest.approx(metrics.mlqa(gold, answers, lang)["f1"])

    for task, langs, split in (("xquad", ("en", "de"), "test"), ("tydiqa", ("en", "id"), "dev")):
        result = json.loads((out / task / "seed1" / "result.json").read_text())
        assert result["split"] == split and result["scores"] is None
        assert "answers withheld" in result["reason"] and "\n" not in result["reason"]
        for lang in langs:
            questions = read_squad(data / ("xquad" if task == "xquad" else "tydiqa/tydiqa-goldp-v1.1-dev") /
                                   (f"xquad.{lang}.json" if task == "xquad" else f"tydiqa.goldp.{lang}.dev.json"))[0]
            answers = json.loads((out / task / "seed1" / "predictions" / task / f"test-{lang}.json").read_text())
            contexts = {e.id: e.context for e in questions}
            assert set(answers) == set(contexts) and all(a in contexts[q] for q, a in answers.items())
        assert not (out / "labels" / split / task).exists()  # stripped answers are no labels
        assert results[task] == {"split": split, "seeds": [1], "metric": "f1", "avg_metric_is": "(exact_match + f1) / 2",
                                 "scored": False, "reason": result["reason"]}
    tydiqa = json.loads((out / "tydiqa" / "seed1" / "result.json").read_text())
    assert tydiqa["selection"]["rule"] == "last weights" and "english_model" not in tydiqa
    assert results["mlqa"]["scored"] is True
    assert results["mean_of_scored_tasks"] == pytest.approx(results["mlqa"]["avg_metric"])  # unscored tasks left out
    assert "official_aggregates" not in results  # all three QA tasks ran, two unscored: no category score
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))


def test_tatoeba_with_the_english_side_sorted(setup):
    """XTREME's download sorts each English side, hiding the gold: the predictions (per line of the sorted
    English file, a non-English index) are written, the same sentences an aligned run retrieves, and not scored."""
    tmp, model, _ = setup
    tiny_layer = official_layer(AutoConfig.from_pretrained(str(model)))
    aligned, shuffled = write_tatoeba(tmp / "tatoeba-aligned"), write_tatoeba(tmp / "tatoeba-sorted", sort_english=True)
    run(model, aligned, ["tatoeba"], tmp / "tatoeba-aligned-run", seeds=[1], languages=["de", "fr"])
    out = tmp / "tatoeba-sorted-run"
    results = run(model, shuffled, ["tatoeba"], out, seeds=[1, 2], languages=["de", "fr"])
    for seed in (1, 2):
        result = json.loads((out / "tatoeba" / f"seed{seed}" / "result.json").read_text())
        assert result["scores"] is None and "sorted" in result["reason"] and result["layer"] == tiny_layer
    for lang in ("de", "fr"):
        # Official direction: line j holds the non-English sentence English line j retrieves, in either layout.
        english = read_lines(shuffled / "tatoeba" / f"{lang}-en.en")
        found = dict(zip(english, read_lines(out / "tatoeba" / "seed1" / "predictions" / "tatoeba" /
                                             f"test-{lang}.tsv")))
        reference = read_lines(aligned / "tatoeba" / f"{lang}-en.en")
        expected = dict(zip(reference, read_lines(tmp / "tatoeba-aligned-run" / "tatoeba" / "seed1" /
                                                  "predictions" / "tatoeba" / f"test-{lang}.tsv")))
        assert found == expected and len(english) == 27
        assert read_lines(out / "tatoeba" / "seed2" / "predictions" / "tatoeba" / f"test-{lang}.tsv") == \
            read_lines(out / "tatoeba" / "seed1" / "predictions" / "tatoeba" / f"test-{lang}.tsv")
    assert not (out / "labels").exists()
    assert results == {"tatoeba": {"split": "test", "seeds": [1, 2], "metric": "accuracy", "avg_metric_is": "accuracy",
                                   "scored": False, "reason": result["reason"]}}  # no scored task: no means
    assert json.loads((out / "results.json").read_text()) == results


def test_languages_without_labelled_data_are_left_out_and_named(setup, capsys):
    """Tagging test tags withheld and no dev set for one language (UD has treebanks without one): that
    language is recorded as unscored and left out of the means; the command line reports unscored tasks."""
    tmp, model, recipes = setup
    data = write_xtreme(tmp / "data-no-fr-dev", tagged_test=False)
    (data / "panx" / "dev-fr.tsv").unlink()
    out = tmp / "run-no-fr-dev"
    results = run(model, data, ["panx"], out, seeds=[1], recipes=recipes, languages=["en", "de", "fr"])
    result = json.loads((out / "panx" / "seed1" / "result.json").read_text())
    assert result["split"] == "dev" and list(result["unscored_languages"]) == ["fr"]
    assert set(result["scores"]["f1"]) == {"en", "de"} and set(results["panx"]["mean"]) == {"en", "de"}
    assert results["panx"]["transfer_gap"] == pytest.approx(result["scores"]["f1"]["en"] - result["scores"]["f1"]["de"])
    (data / "panx" / "dev-de.tsv").unlink()
    with pytest.raises(ScoreError, match=r"panx's test labels are withheld, and the dev sets scored instead are "
                                         r"missing: \S*dev-de.tsv, \S*dev-fr.tsv"):
        run(model, data, ["panx"], tmp / "run-no-dev", seeds=[1], recipes=recipes, languages=["de", "fr"])

    sorted_data = write_tatoeba(tmp / "tatoeba-sorted-cli", sort_english=True)
    capsys.readouterr()
    assert xtreme_r_main(["run", "--model", str(model), "--data", str(sorted_data), "--tasks", "tatoeba", "--out",
                          str(tmp / "tatoeba-sorted-cli-run"), "--seeds", "1", "--languages", "de",
                          "--tatoeba-encoder", "raw"]) == 0
    assert "tatoeba  test not scored: " in capsys.readouterr().out
    result = json.loads((tmp / "tatoeba-sorted-cli-run" / "tatoeba" / "seed1" / "result.json").read_text())
    assert result["encoder"] == "raw" and "asked for with --tatoeba-encoder raw" in " ".join(
        result["protocol"]["differences"])


def test_tatoeba_from_the_official_layout(setup):
    tmp, model, _ = setup
    data = write_tatoeba(tmp / "tatoeba-data")
    out = tmp / "tatoeba-run"
    results = run(model, data, ["tatoeba"], out, seeds=[1, 2], languages=["de", "fr"])
    one, two = (json.loads((out / "tatoeba" / f"seed{s}" / "result.json").read_text()) for s in (1, 2))
    # no training: the seed changes nothing
    assert one["scores"] == two["scores"] and one["layer"] == official_layer(AutoConfig.from_pretrained(str(model)))
    predicted = read_lines(out / "tatoeba" / "seed1" / "predictions" / "tatoeba" / "test-de.tsv")
    assert len(predicted) == 27 and all(0 <= int(i) < 27 for i in predicted)
    hits = sum(int(i) == k for k, i in enumerate(predicted))
    assert one["scores"]["accuracy"]["de"] == pytest.approx(100 * hits / 27)
    assert results["tatoeba"]["std"]["de"] == 0.0


def _under_zero3(model, recipes, data, out, task: str, languages: str) -> None:
    """``run`` from the command line with DeepSpeed ZeRO-3 (ds_configs/cpu.json), as one launched process; as in
    training, DeepSpeed's shared-memory op (no use on CPU: weam_ds.extensions.skip_unused_ops) is never built."""
    cmd = [sys.executable, "-m", "weam_ds.xtreme_r", "run", "--model", str(model), "--data", str(data),
           "--tasks", task, "--out", str(out), "--seeds", "1", "--recipes", str(recipes), "--languages", languages,
           "--deepspeed", "ds_configs/cpu.json"]
    extensions = out.parent / "torch_extensions"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "TORCH_EXTENSIONS_DIR": str(extensions)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (extensions / "deepspeed_shm_comm").exists()


@pytest.mark.slow
def test_fine_tuning_xnli_xcopa_in_two_stages_and_a_dual_encoder_under_deepspeed_zero3(setup, tmp_path):
    """Three tasks in one launched process under ZeRO-3. XNLI: fine-tuned and scored. XCOPA: the SIQA stage's
    selected weights are gathered from ZeRO-3's partitions and the COPA stage starts from them. Mewsli-X: the dual
    encoder is no transformers model class: ZeRO-3 partitions it, evaluates it on the dev set after each epoch,
    reloads the best epoch and embeds the pool all the same."""
    tmp, model, recipes = setup
    data = write_mewslix(write_siqa(write_xcopa(write_xtreme(tmp_path / "data"), languages=("en", "it"))),
                         languages=("en", "de"))
    both = _siqa_recipes(tmp_path / "recipes")  # xcopa.yaml in two stages, the other tasks' recipes beside it
    for task in ("xnli", "mewslix"):
        shutil.copy(recipes / f"{task}.yaml", both)
    out = tmp_path / "ds-run"
    _under_zero3(model, both, data, out, "xnli,xcopa,mewslix", "en,de,it")  # xnli: en, de; xcopa: it; mewslix: en, de

    result = json.loads((out / "xnli" / "seed1" / "result.json").read_text())
    predicted = read_lines(out / "xnli" / "seed1" / "predictions" / "xnli" / "test-de.tsv")
    gold = read_lines(out / "labels" / "test" / "xnli" / "test-de.tsv")
    assert result["scores"]["accuracy"]["de"] == pytest.approx(metrics.accuracy(gold, predicted)["accuracy"])

    result = json.loads((out / "xcopa" / "seed1" / "result.json").read_text())
    assert [(s["stage"], s["from"]) for s in result["stages"]] == [("siqa", "model"), ("copa", "siqa")]
    _xcopa_scored(out, result, ["it"])

    result = json.loads((out / "mewslix" / "seed1" / "result.json").read_text())
    predicted = json.loads((out / "mewslix" / "seed1" / "predictions" / "mewslix" / "test-de.json").read_text())
    gold = json.loads((out / "labels" / "test" / "mewslix" / "test-de.json").read_text())
    assert all(set(r) == set(ENTITIES) for r in predicted.values()) and set(predicted) == set(gold)
    assert result["scores"]["map@20"]["de"] == pytest.approx(metrics.mewslix_map20(gold, predicted)["map@20"])


def _mtimes(out):
    return {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/result.json")}


def test_mewslix_dual_encoder_end_to_end(setup):
    tmp, model, recipes = setup
    data = write_mewslix(tmp / "mewslix-data")
    out = tmp / "mewslix-run"
    langs = ["en", "de", "es"]
    results = run(model, data, ["mewslix"], out, seeds=[1, 2], recipes=recipes, languages=langs)
    articles = [json.loads(line) for line in
                (data / "mewslix" / "wikinews_mentions-test.jsonl").read_text(encoding="utf-8").splitlines()]
    for seed in (1, 2):
        result = json.loads((out / "mewslix" / f"seed{seed}" / "result.json").read_text())
        assert result["split"] == "test" and result["candidates"] == len(ENTITIES)
        assert not (out / "mewslix" / f"seed{seed}" / "checkpoints").exists()
        for lang in langs:
            predicted = json.loads((out / "mewslix" / f"seed{seed}" / "predictions" / "mewslix" /
                                    f"test-{lang}.json").read_text())
            gold = json.loads((out / "labels" / "test" / "mewslix" / f"test-{lang}.json").read_text())
            # The labels are the official shape: every test mention of the language -> [its entity id].
            assert gold == {m["example_id"]: [m["entity_id"]] for a in articles
                            if a["context"]["language"] == lang for m in a["mentions"]}
            # Eight candidates, fewer than 20: each mention ranks the whole candidate set, once each.
            assert set(predicted) == set(gold)
            assert all(len(r) == len(ENTITIES) and set(r) == set(ENTITIES) for r in predicted.values())
            value = result["scores"]["map@20"][lang]
            assert 0 <= value <= 100 and value == pytest.approx(metrics.mewslix_map20(gold, predicted)["map@20"])
    agg = results["mewslix"]
    assert agg["metric"] == "map@20" and agg["split"] == "test" and set(agg["mean"]) == set(langs)
    assert "transfer_gap" in agg and "retrieval" not in results  # tatoeba was not run

    before = _mtimes(out)
    run(model, data, ["mewslix"], out, seeds=[1, 2], recipes=recipes, languages=langs)
    assert _mtimes(out) == before


def test_mewslix_from_xtremes_split_layout_scores_dev(setup):
    """XTREME's download_data.sh splits WikiNews per language and blanks the test entity ids: the dev
    mentions are scored, and the result says so."""
    tmp, model, recipes = setup
    data = write_mewslix(tmp / "mewslix-split", languages=("en", "de"), layout="xtreme")
    assert not (data / "mewslix" / "wikinews_mentions-test.jsonl").exists()
    out = tmp / "mewslix-split-run"
    run(model, data, ["mewslix"], out, seeds=[1], recipes=recipes, languages=["en", "de"])
    result = json.loads((out / "mewslix" / "seed1" / "result.json").read_text())
    assert result["split"] == "dev"
    gold = json.loads((out / "labels" / "dev" / "mewslix" / "test-de.json").read_text())
    assert gold == json.loads((data / "mewslix" / "wikinews_labels" / "dev-de.json").read_text())
    predicted = json.loads((out / "mewslix" / "seed1" / "predictions" / "mewslix" / "test-de.json").read_text())
    assert result["scores"]["map@20"]["de"] == pytest.approx(metrics.mewslix_map20(gold, predicted)["map@20"])


def test_lareqa_dual_encoder_end_to_end(setup):
    tmp, model, recipes = setup
    langs = ["en", "de", "es"]
    data = write_lareqa(tmp / "lareqa-data", languages=langs)
    out = tmp / "lareqa-run"
    results = run(model, data, ["lareqa"], out, seeds=[1], recipes=recipes, languages=langs)
    result = json.loads((out / "lareqa" / "seed1" / "result.json").read_text())
    assert result["split"] == "test" and result["recipe"]["query_length"] == 16
    pool = {f"{lang}_{p}_{k}" for lang in langs for p in range(1, 10) for k in (0, 1)}  # 9 paragraphs, 2 sentences
    assert result["candidates"] == len(pool)
    for lang in langs:
        predicted = json.loads((out / "lareqa" / "seed1" / "predictions" / "lareqa" / f"test-{lang}.json").read_text())
        gold = json.loads((out / "labels" / "test" / "lareqa" / f"test-{lang}.json").read_text())
        # Question k of every language is answered by the second sentence of paragraph k+1, in each language.
        assert {q: sorted(ids) for q, ids in gold.items()} == \
            {f"xquad-r-{k}_{lang}": sorted(f"{x}_{k + 1}_1" for x in langs) for k in range(9)}
        assert set(predicted) == set(gold)
        assert all(len(r) == 20 == len(set(r)) and set(r) <= pool for r in predicted.values())
        value = result["scores"]["map@20"][lang]
        assert 0 <= value <= 100 and value == pytest.approx(metrics.lareqa_map20(gold, predicted)["map@20"])
    assert results["lareqa"]["metric"] == "map@20"
    assert results["lareqa"]["avg_metric"] == pytest.approx(sum(result["scores"]["map@20"].values()) / 3)

    before = _mtimes(out)
    run(model, data, ["lareqa"], out, seeds=[1], recipes=recipes, languages=langs)
    assert _mtimes(out) == before


def test_retrieval_tasks_name_every_missing_file(setup, tmp_path):
    _, model, recipes = setup
    data = write_lareqa(write_mewslix(tmp_path / "data"))
    (data / "mewslix" / "candidate_set_entities.jsonl").unlink()
    (data / "mewslix" / "wikinews_mentions-test.jsonl").unlink()
    (data / "lareqa" / "xquad-r" / "de.json").unlink()
    with pytest.raises(ScoreError, match=r"mewslix needs .*candidate_set_entities.jsonl, .*wikinews_mentions-test"):
        run(model, data, ["mewslix"], tmp_path / "out", seeds=[1], recipes=recipes, languages=["en", "de"])
    with pytest.raises(ScoreError, match=r"lareqa needs .*xquad-r/de.json"):
        run(model, data, ["lareqa"], tmp_path / "out", seeds=[1], recipes=recipes, languages=["en", "de"])
    assert not (tmp_path / "out").exists()
