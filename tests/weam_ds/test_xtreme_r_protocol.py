"""The official protocol in weam_ds.xtreme_r run: the shipped recipes against the official scripts' values, the
effective batch split over devices, the selection rule on a tiny run, and the official aggregates."""
from __future__ import annotations

import json
import statistics

import pytest
from transformers import AutoTokenizer, XLMRobertaConfig
from xtreme_fixtures import save_tiny_model, write_qa, write_xtreme

from data_prep.typed_config import ConfigError
from weam_ds.presets import PRESETS
from weam_ds.xtreme_r import qa
from weam_ds.xtreme_r.__main__ import main
from weam_ds.xtreme_r.aggregate import OURS_NOT_OFFICIAL, aggregate
from weam_ds.xtreme_r.dual_encoder import DUPLICATES_MASKED, RetrievalTuner
from weam_ds.xtreme_r.eval_dir import EvalDir
from weam_ds.xtreme_r.recipe import RECIPES, Recipe, for_size, load_recipe, model_size_class
from weam_ds.xtreme_r.run import run
from weam_ds.xtreme_r.tag_pieces import reserve_differences
from weam_ds.xtreme_r.tasks import CATEGORIES, LANGUAGES, TASKS, VERSIONS, EverySteps
from weam_ds.xtreme_r.tuners import batch_split, final_weights_difference

_QA = [("learning_rate", 3e-5, "train_qa.sh LR"), ("epochs", 3, "train_qa.sh NUM_EPOCHS"),
       ("max_length", 384, "train_qa.sh MAXL"), ("doc_stride", 128, "train_qa.sh --doc_stride"),
       ("max_query_length", 64, "run_squad.py --max_query_length default"),
       ("batch_size", 32, "train_qa.sh BATCH_SIZE 4 x GRAD_ACC 8"), ("warmup_steps", 500, "train_qa.sh --warmup_steps"),
       ("weight_decay", 1e-4, "train_qa.sh --weight_decay"), ("selection", "last", "train_qa.sh --save_steps -1")]
_TAGGING = [("learning_rate", 2e-5, "LR"), ("epochs", 10, "NUM_EPOCHS"), ("max_length", 128, "MAX_LENGTH"),
            ("batch_size", 32, "BATCH_SIZE 8 x GRAD_ACC 4"), ("warmup_steps", 0, "run_tag.py default"),
            ("weight_decay", 0.0, "run_tag.py default")]
_PAIRS = [("learning_rate", 2e-5, "LR"), ("epochs", 5, "EPOCH"), ("max_length", 128, "MAXL"),
          ("batch_size", 32, "BATCH_SIZE 8 x GRAD_ACC 4"), ("warmup_steps", 0, "run_classify.py default"),
          ("weight_decay", 0.0, "run_classify.py default")]
BASE = (
    [("xnli", f, v, f"train_xnli.sh {s}") for f, v, s in _PAIRS]
    + [("xnli", "selection", EverySteps(100), "train_xnli.sh --save_steps 100 --save_only_best_checkpoint")]
    + [("pawsx", f, v, f"train_pawsx.sh {s}") for f, v, s in _PAIRS]
    + [("pawsx", "selection", EverySteps(200), "train_pawsx.sh --save_steps 200 --save_only_best_checkpoint")]
    + [("panx", f, v, f"train_panx.sh {s}") for f, v, s in _TAGGING]
    + [("panx", "selection", EverySteps(1000), "train_panx.sh --save_steps 1000 --save_only_best_checkpoint")]
    + [("udpos", f, v, f"train_udpos.sh {s}") for f, v, s in _TAGGING]
    + [("udpos", "selection", EverySteps(500), "train_udpos.sh --save_steps 500 --save_only_best_checkpoint")]
    + [(task, f, v, s) for task in ("xquad", "mlqa", "tydiqa") for f, v, s in _QA]
    + [("xcopa", "learning_rate", 2e-5, "train_xcopa.sh LR"), ("xcopa", "epochs", 5, "train_xcopa.sh EPOCH"),
       ("xcopa", "max_length", 128, "train_xcopa.sh MAXL"),
       ("xcopa", "batch_size", 32, "train_xcopa.sh BATCH_SIZE 8 x GRAD_ACC 4"),
       ("xcopa", "first_stage", "siqa", "train_xcopa.sh: TASK=siqa, then xcopa from SIQA_SAVE_DIR"),
       ("xcopa", "selection", "last", "run_xcopa.py: trainer.save_model() after training, no selection"),
       ("mewslix", "learning_rate", 2e-5, "train_mewslix.sh LR (mBERT)"),
       ("mewslix", "epochs", 2, "train_mewslix.sh NUM_EPOCHS"),
       ("mewslix", "max_length", 64, "train_mewslix.sh MAX_SEQ_LEN"),
       ("mewslix", "batch_size", 256, "train_mewslix.sh PER_GPU_BATCH_SIZE 64 x GRAD_ACC_STEPS 4"),
       ("mewslix", "device_batch", 64, "train_mewslix.sh PER_GPU_BATCH_SIZE (the in-batch negatives)"),
       ("mewslix", "warmup_steps", 0, "train_mewslix.sh --warmup_steps 0"),
       ("mewslix", "selection", "last", "run_eval_mewslix.sh embeds with the final MODEL_DIR"),
       ("lareqa", "learning_rate", 2e-5, "train_lareqa.sh LR"), ("lareqa", "epochs", 3, "train_lareqa.sh NUM_EPOCHS"),
       ("lareqa", "query_length", 96, "train_lareqa.sh MAX_QUERY_LEN"),
       ("lareqa", "max_length", 256, "train_lareqa.sh MAX_ANSWER_LEN"),
       ("lareqa", "batch_size", 16, "train_lareqa.sh PER_GPU_BATCH_SIZE 4 x GRAD_ACC_STEPS 4"),
       ("lareqa", "device_batch", 4, "train_lareqa.sh PER_GPU_BATCH_SIZE (the in-batch negatives)"),
       ("lareqa", "selection", EverySteps(1000), "train_lareqa.sh --save_steps 1000; run_eval_lareqa.sh picks one"),
       ("tatoeba", "max_length", 512, "run_tatoeba.sh MAXL"),
       ("tatoeba", "batch_size", 100, "run_tatoeba.sh --batch_size 100")])

# The scripts' branch for xlm-roberta-large and xlm-mlm-100-1280 (train_mewslix.sh, train_lareqa.sh: xlm-roberta-large).
_BRANCH = "in the xlm-roberta-large / xlm-mlm-100-1280 branch"
_LARGE_BATCH = [("batch_size", 32, f"BATCH_SIZE=2 x GRAD_ACC=16 {_BRANCH}"),
                ("device_batch", 2, f"BATCH_SIZE=2 {_BRANCH}")]
LARGE = (
    [("xnli", "learning_rate", 3e-5, f"train_xnli.sh LR=3e-5 {_BRANCH}"), ("xnli", "epochs", 5, "train_xnli.sh EPOCH")]
    + [("xnli", f, v, f"train_xnli.sh {s}") for f, v, s in _LARGE_BATCH]
    + [("xcopa", "learning_rate", 3e-5, f"train_xcopa.sh LR=3e-5 {_BRANCH}"),
       ("xcopa", "first_stage", "siqa", "train_xcopa.sh: TASK=siqa, then xcopa, for every model")]
    + [("xcopa", f, v, f"train_xcopa.sh {s}") for f, v, s in _LARGE_BATCH]
    + [("pawsx", "learning_rate", 2e-5, "train_pawsx.sh LR=2e-5, which its large branch keeps")]
    + [("pawsx", f, v, f"train_pawsx.sh {s}") for f, v, s in _LARGE_BATCH]
    + [(task, "learning_rate", 2e-5, f"train_{task}.sh LR=2e-5, which its large branch keeps")
       for task in ("udpos", "panx")]
    + [(task, f, v, f"train_{task}.sh {s}") for task in ("udpos", "panx") for f, v, s in _LARGE_BATCH]
    + [("mewslix", "learning_rate", 1e-5, "train_mewslix.sh LR=1e-5 (xlm-roberta-large)"),
       ("mewslix", "batch_size", 32, "train_mewslix.sh PER_GPU_BATCH_SIZE=8 x GRAD_ACC_STEPS=4 (xlm-roberta-large)"),
       ("mewslix", "device_batch", 8, "train_mewslix.sh PER_GPU_BATCH_SIZE=8: 7 in-batch negatives, not 63"),
       ("mewslix", "epochs", 2, "train_mewslix.sh NUM_EPOCHS, for every model"),
       ("lareqa", "learning_rate", 2e-5, "train_lareqa.sh LR, for every model"),
       ("lareqa", "batch_size", 16, "train_lareqa.sh PER_GPU_BATCH_SIZE 4 x GRAD_ACC_STEPS 4, for every model"),
       ("lareqa", "device_batch", 4, "train_lareqa.sh PER_GPU_BATCH_SIZE, for every model")]
    + [(task, f, v, f"{s}: one set for every model") for task in ("xquad", "mlqa", "tydiqa") for f, v, s in _QA])
OFFICIAL = [(t, "base", k, v, s) for t, k, v, s in BASE] + [(t, "large", k, v, s) for t, k, v, s in LARGE]
"""(task, size class, recipe key, the script's value, the script line it is read from)."""


@pytest.mark.parametrize("task, size, key, value, source", OFFICIAL,
                         ids=[f"{t}-{z}-{k}" for t, z, k, _, _ in OFFICIAL])
def test_shipped_recipes_hold_the_official_values(task, size, key, value, source):
    recipe = for_size(load_recipe(TASKS[task], RECIPES), size)
    assert recipe.size_class == size
    assert getattr(recipe, key) == value, f"{task}.yaml {size} {key} is {getattr(recipe, key)!r}; {source}: {value!r}"


def _config_dir(folder, **shape):
    """A model directory with only its config: what model_size_class reads (the weights are never loaded)."""
    XLMRobertaConfig(vocab_size=1000, **shape).save_pretrained(str(folder))
    return folder


def test_the_size_class_follows_the_scripts_branch(tmp_path):
    """The scripts give their large values to xlm-roberta-large and xlm-mlm-100-1280 (16 layers of 1280) and the base
    ones to xlm-roberta-base and xlm-mlm-tlm-xnli15-1024 (12 layers of 1024); the presets fall on the same sides."""
    shapes = {"xlm-mlm-tlm-xnli15-1024": ("base", dict(num_hidden_layers=12, hidden_size=1024, intermediate_size=4096,
                                                       num_attention_heads=8)),
              "xlm-mlm-100-1280": ("large", dict(num_hidden_layers=16, hidden_size=1280, intermediate_size=5120,
                                                 num_attention_heads=16))}
    shapes.update({name: (expected, dict(num_hidden_layers=PRESETS[name].layers, hidden_size=PRESETS[name].hidden,
                                         intermediate_size=PRESETS[name].ffn, num_attention_heads=PRESETS[name].heads))
                   for name, expected in (("tiny", "base"), ("base", "base"), ("large", "large"))})
    for name, (expected, shape) in shapes.items():
        assert model_size_class(_config_dir(tmp_path / name, **shape)) == expected, name


def test_every_fine_tuned_task_states_its_official_selection():
    """Each runnable task's description carries the official rule, and its recipe says the same."""
    for name, task in TASKS.items():
        if task.runnable and task.family != "retrieval":
            assert load_recipe(task, RECIPES).selection == task.selection, name
            assert (name, "selection", task.selection) in {(t, k, v) for t, k, v, _ in BASE}


def _recipe(**values) -> Recipe:
    return Recipe(learning_rate=1e-5, epochs=1, max_length=8, **values)


def test_the_effective_batch_is_split_over_devices_and_accumulation():
    assert batch_split(_recipe(batch_size=32), 1) == batch_split(_recipe(batch_size=32, device_batch=32), 1)
    one, eight = batch_split(_recipe(batch_size=32, device_batch=8), 1), batch_split(_recipe(batch_size=32), 8)
    for split in (one, eight):
        assert split.devices * split.device_batch * split.accumulation == split.effective == 32
    assert (one.device_batch, one.accumulation) == (8, 4) and (eight.device_batch, eight.accumulation) == (4, 1)
    negatives = batch_split(_recipe(batch_size=256, device_batch=64), 2)
    assert (negatives.device_batch, negatives.accumulation) == (64, 2)
    large = batch_split(for_size(load_recipe(TASKS["mewslix"], RECIPES), "large"), 1)
    assert (large.device_batch, large.accumulation) == (8, 4)  # train_mewslix.sh's xlm-roberta-large: 7 negatives
    with pytest.raises(ConfigError, match="batch_size 30 does not divide over 4 devices"):
        batch_split(_recipe(batch_size=30), 4)
    with pytest.raises(ConfigError, match="batch_size 256 is not 8 devices x device_batch 64"):
        batch_split(_recipe(batch_size=256, device_batch=64), 8)


def test_a_batch_that_does_not_divide_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"xnli\.yaml: batch_size 32 does not divide over 3 devices"):
        run(tmp_path / "model", tmp_path / "data", ["xnli"], tmp_path / "out", seeds=[1])
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # a model directory: the recipe is checked before it is loaded
    argv = ["run", "--model", str(model), "--data", str(tmp_path), "--tasks", "panx", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "panx.yaml: batch_size 32 does not divide over 3 devices" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_a_bad_selection_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "xnli.yaml").write_text("learning_rate: 1.0e-3\nepochs: 1\nbatch_size: 8\nmax_length: 32\n"
                                        "selection: best\n")
    with pytest.raises(ConfigError, match=r"xnli\.yaml: selection 'best' \(expected last or \{every_steps: N\}\)"):
        load_recipe(TASKS["xnli"], tmp_path)


@pytest.fixture(scope="module")
def tiny(small_dataset, tmp_path_factory):
    dataset, _, _ = small_dataset
    tmp = tmp_path_factory.mktemp("protocol")
    return tmp, save_tiny_model(dataset, tmp / "model"), write_xtreme(tmp / "data", languages=("en", "de"))


def _xnli(tmp, model, data, name: str, selection: str) -> dict:
    """A tiny XNLI run (27 English examples, batch 8: 4 steps an epoch, 8 in all) under ``selection``; its
    result.json. The fixture's English test set is its dev set, so the English test
    score of the kept weights must equal their dev score at the step selection kept."""
    recipes = tmp / f"recipes-{name}"
    recipes.mkdir()
    (recipes / "xnli.yaml").write_text(f"learning_rate: 1.0e-3\nepochs: 2\nbatch_size: 8\nmax_length: 32\n"
                                       f"selection: {selection}\n")
    out = tmp / f"run-{name}"
    run(model, data, ["xnli"], out, seeds=[1], recipes=recipes, languages=["en"])
    return json.loads((out / "xnli" / "seed1" / "result.json").read_text())


def test_selection_follows_the_recipes_rule(tiny):
    tmp, model, data = tiny
    every3 = _xnli(tmp, model, data, "every3", "{every_steps: 3}")
    chosen = every3["selection"]
    # Every N steps, and the final weights as a candidate too, as the official --eval_all_checkpoints has them
    # (a transformers whose Trainer does not evaluate them would list that as a difference).
    assert list(chosen["evaluated"]) == ["3", "6", "8"] and chosen["final_step"] == 8
    assert not any(d.startswith("selection: the final weights") for d in every3["protocol"]["differences"])
    best = max(chosen["evaluated"].values())
    assert chosen["kept_step"] == int(next(s for s, v in chosen["evaluated"].items() if v == best))
    assert every3["scores"]["accuracy"]["en"] == pytest.approx(best)  # the kept weights are the selected ones
    assert every3["protocol"]["selection"] == "best on English dev, evaluated every 3 steps"
    assert every3["recipe"]["size_class"] == "base"  # the tiny model takes the base values

    last = _xnli(tmp, model, data, "last", "last")
    assert last["selection"]["evaluated"] == {} and last["selection"]["kept_step"] == 8
    assert last["protocol"]["selection"] == "last weights"
    # Step 8 is the final one: "last" keeps the weights the cadence run evaluated there (same seed, same steps).
    assert last["scores"]["accuracy"]["en"] == pytest.approx(chosen["evaluated"]["8"])
    assert last["protocol"]["batch"] == {"effective": 8, "devices": 1, "device_batch": 8, "accumulation": 1}
    assert last["protocol"]["official_script"].endswith("scripts/train_xnli.sh")


def _results(out, tasks: dict[str, dict[str, float]], split: dict[str, str] | None = None):
    """result.json files as run writes them: per task one seed, ``tasks[task]`` the main metric per language."""
    for name, per_lang in tasks.items():
        task = TASKS[name]
        scores = {metric: dict(per_lang) for metric in task.metrics}
        scores.update({f"avg_{m}": statistics.fmean(per_lang.values()) for m in task.metrics})
        scores["avg_metric"] = statistics.fmean(scores[f"avg_{m}"] for m in task.metrics)
        work = out / name / "seed1"
        work.mkdir(parents=True)
        (work / "result.json").write_text(json.dumps({"split": (split or {}).get(name, task.test_split),
                                                      "scores": scores}))


def test_official_aggregates_when_every_task_of_a_version_is_scored(tmp_path):
    version = LANGUAGES["xtreme-r"]
    scores = {name: {lang: 10.0 + k + i for i, lang in enumerate(version[name] or TASKS[name].languages_to_run())}
              for k, name in enumerate(version)}
    _results(tmp_path, scores)
    results = aggregate(tmp_path, list(version), [1])
    avg = {name: statistics.fmean(scores[name].values()) for name in version}
    found = results["official_aggregates"]["xtreme-r"]
    assert found["all_task"] == pytest.approx(statistics.fmean(avg.values()))
    assert found["caveats"] == [OURS_NOT_OFFICIAL["lareqa"]]  # evaluate.py cannot score LAReQA: all_task is ours
    for category, members in CATEGORIES["xtreme-r"].items():
        assert found[category] == pytest.approx(statistics.fmean(avg[m] for m in members))
    assert results["mean_of_scored_tasks"] == pytest.approx(statistics.fmean(avg.values()))
    assert results["xquad"]["avg_metric_is"] == "(exact_match + f1) / 2"

    partial = tmp_path / "partial"
    _results(partial, {"udpos": {"en": 50.0, "de": 40.0}, "panx": scores["panx"], "xnli": scores["xnli"]},
             split={"panx": "dev"})
    results = aggregate(partial, ["udpos", "panx", "xnli"], [1])
    found = results["official_aggregates"]["xtreme-r"]
    assert set(found) == {"tagging", "caveats"}  # xcopa was not run: no classification, no all_task
    assert found["caveats"] == ["panx: the dev split scored (test labels withheld)",
                                f"udpos: scored on 2 languages, xtreme-r lists {len(LANGUAGES['xtreme-r']['udpos'])}"]


def test_the_tasks_are_in_the_official_scorers_order():
    # evaluate.py: XTREME_TASK2LANGS and XTREME_R_TASK2LANGS, whose key order is the scorer's output order
    assert VERSIONS["xtreme"] == ["pawsx", "xnli", "panx", "udpos", "bucc2018", "tatoeba", "xquad", "mlqa", "tydiqa"]
    assert VERSIONS["xtreme-r"] == ["xnli", "panx", "udpos", "tatoeba", "xcopa", "lareqa", "mewslix", "xquad", "mlqa",
                                    "tydiqa"]


def test_every_departure_is_listed_where_it_applies(tiny):
    """The departures checked against the official code, each in the differences of the runs it applies to."""
    _, model, _ = tiny
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    lareqa, mewslix = (load_recipe(TASKS[t], RECIPES) for t in ("lareqa", "mewslix"))
    # LAReQA's candidates: weam-ds's sentence regex on SQuAD, sentence and paragraph joined with a space.
    assert any("sb_sed.py" in d for d in lareqa.differences)
    assert any("joined with a space" in d for d in lareqa.differences)
    # The in-batch duplicates masked, for both dual encoders.
    for recipe in (lareqa, mewslix):
        assert DUPLICATES_MASKED in RetrievalTuner(model, tokenizer, recipe).differences
    # The large branch's --do_lower_case, only for large models.
    for recipe in (lareqa, mewslix):
        assert not any("--do_lower_case" in d for d in recipe.differences)
        assert any("--do_lower_case" in d for d in for_size(recipe, "large").differences)
    # Tagging pieces: the official preprocessing reserves 3 tokens for XLM-R models, 2 for the others.
    ours = tokenizer.num_special_tokens_to_add(pair=False)
    assert ours == 2
    assert [d for d in reserve_differences(tokenizer, "xlm-roberta") if "max_length - 3" in d]
    assert reserve_differences(tokenizer, "bert") == []
    # The final weights: a difference only where the Trainer left them out of the candidates.
    assert final_weights_difference({"evaluated": {"3": 1.0, "6": 2.0}, "final_step": 8, "kept_step": 6})
    assert final_weights_difference({"evaluated": {3: 1.0, 6: 2.0, 8: 0.5}, "final_step": 8, "kept_step": 6}) == []
    assert final_weights_difference({"evaluated": {}, "final_step": 8, "kept_step": 8}) == []  # last weights kept


def test_a_reused_squad_model_is_fine_tuned_again_when_its_recipe_changed(tiny):
    """One English-SQuAD model per seed is shared by XQuAD, MLQA and Tatoeba: reused as long as the recipe it was
    fine-tuned under is the one asked for, fine-tuned again otherwise (here: the large models' values)."""
    tmp, model, _ = tiny
    data, out = write_qa(tmp / "qa-data"), tmp / "squad-run"
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    base = Recipe(learning_rate=1e-3, epochs=1, batch_size=8, max_length=48, doc_stride=16, max_query_length=16,
                  selection="last")
    weights = qa.train_squad(model, data, base, 1, out, None, tokenizer) / "model.safetensors"
    first = weights.stat().st_mtime_ns
    assert qa.train_squad(model, data, base, 1, out, None, tokenizer).joinpath("model.safetensors").stat() \
        .st_mtime_ns == first  # the same recipe: kept
    large = for_size(base, "large")
    qa.train_squad(model, data, large, 1, out, None, tokenizer)
    assert weights.stat().st_mtime_ns != first
    record = json.loads((EvalDir(out).squad(1) / "selection.json").read_text())
    assert record["recipe"]["size_class"] == "large" and record["recipe_sha256"] == qa.recipe_hash(large)
