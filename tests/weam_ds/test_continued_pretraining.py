"""Monolingual text in training (the mixture, MLM only) and continued pre-training of checkpoints: the
tokenizer guard, an mBERT-shaped BertForMaskedLM and an XLM-R-shaped one under every objective, one 2-rank
ZeRO-3 run on fr-en pairs and Spanish text, and the "WEAM as in the paper" recipe of docs/run_config.md."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoConfig, AutoTokenizer

from conftest import shard_samples
from documentation import yaml_blocks
from data_prep.config import config_from_dict
from data_prep.manifest import read_manifest
from data_prep.typed_config import ConfigError, from_dict
from monolingual_fixtures import bert_checkpoint_and_dataset
from weam_ds import train as train_module
from weam_ds.batch import TokenInfo, collate, mask_batch
from weam_ds.config import DataConfig, MaskingConfig, ObjectiveConfig, RunConfig, load_run_config
from weam_ds.data import Corpus
from weam_ds.mixture import source_probabilities
from weam_ds.objective import PretrainingObjective
from weam_ds.presets import build_model
from weam_ds.vocab_check import check_model_vocabulary

from runs import metric_rows, run_config, train, write_config



@pytest.fixture(scope="module")
def bert_dataset(tmp_path_factory):
    return bert_checkpoint_and_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def swapped_checkpoint(bert_dataset, tmp_path_factory) -> Path:
    """The same checkpoint, its tokenizer's vocabulary as large but with two tokens' ids exchanged: only a
    comparison of the vocabularies (not of their sizes) tells it from the dataset's."""
    checkpoint, _ = bert_dataset
    other = tmp_path_factory.mktemp("swapped") / "mbert-swapped"
    shutil.copytree(checkpoint, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tokenizer["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    assert len(AutoTokenizer.from_pretrained(str(other))) == len(vocab)
    return other


def _batch(dataset: Path, info: TokenInfo, pairs: tuple[str, ...], n: int) -> dict:
    """The first ``n`` train samples of each source, collated and masked (30%, so that every row predicts)."""
    samples = shard_samples(dataset, pairs, per_pair=n)
    return mask_batch(collate(samples, info, 48), info, MaskingConfig(rate=0.3), torch.Generator().manual_seed(0))


def test_mixture_weighs_monolingual_text_apart_only_when_asked(bert_dataset):
    sizes, mono = np.array([400.0, 50.0, 900.0, 20.0]), np.array([False, False, True, True])
    alike = sizes ** 0.3 / (sizes ** 0.3).sum()
    assert np.array_equal(source_probabilities(sizes, mono, 0.3), alike)  # one mixture, as without text
    p = source_probabilities(sizes, mono, 0.3, monolingual_weight=0.25, monolingual_temperature=0.7)
    assert p[mono].sum() == pytest.approx(0.25) and p.sum() == pytest.approx(1.0)
    assert p[0] / p[1] == pytest.approx((400 / 50) ** 0.3) and p[2] / p[3] == pytest.approx((900 / 20) ** 0.7)
    only_pairs = source_probabilities(sizes[:2], mono[:2], 0.3, monolingual_weight=0.25)
    assert np.allclose(only_pairs, alike[:2] / alike[:2].sum())

    _, dataset = bert_dataset
    corpus = Corpus.open(DataConfig(datasets=[str(dataset)], monolingual_weight=0.4))
    assert corpus.pairs == ["es", "fr-en"] and corpus.probabilities == pytest.approx([0.4, 0.6])
    assert Corpus.open(DataConfig(datasets=[str(dataset)], pairs=["es"])).pairs == ["es"]
    for bad, key in (({"monolingual_weight": 1.0}, "monolingual_weight"),
                     ({"monolingual_temperature": 0.5}, "monolingual_temperature")):
        with pytest.raises(ConfigError, match=f"^data: {key}: "):
            from_dict(DataConfig, {"datasets": [str(dataset)], **bad}, where="data")


def test_monolingual_rows_contribute_mlm_only(bert_dataset):
    checkpoint, dataset = bert_dataset
    info = TokenInfo.from_tokenizer(AutoTokenizer.from_pretrained(str(checkpoint)))
    batch = _batch(dataset, info, ("es",), 8)
    assert not batch["parallel"].any() and (batch["src_labels"] != -100).any()
    model = build_model(checkpoint, info.vocab_size).eval()  # eval: no dropout, so the objectives can be compared
    with torch.no_grad():
        out = {name: PretrainingObjective(model, ObjectiveConfig(name=name))(batch)
               for name in ("mlm", "weam", "tlm")}
    for name in ("weam", "tlm"):
        torch.testing.assert_close(out[name].loss, out["mlm"].loss)
        assert out[name].xpred == 0 and out[name].tokens == out["mlm"].tokens
    assert out["mlm"].tokens["mlm"] == int((batch["src_labels"] != -100).sum())  # the source side alone


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_checkpoints_train_with_every_objective(bert_dataset, tmp_path, family):
    """mBERT's shape ([CLS]/[SEP], two token types, positions from 0) and XLM-R's, continued from a saved
    checkpoint on the dataset built with its tokenizer: every objective learns a fixed mixed batch."""
    checkpoint, dataset = bert_dataset
    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    info = TokenInfo.from_tokenizer(tok)
    assert (info.pad_id, info.bos_id, info.eos_id) == (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id)
    if family == "xlm-roberta":
        torch.manual_seed(0)
        build_model("tiny", info.vocab_size, pad_token_id=info.pad_id, bos=info.bos_id,
                    eos=info.eos_id).save_pretrained(str(tmp_path))
        checkpoint = tmp_path
    assert AutoConfig.from_pretrained(str(checkpoint)).model_type == family
    batch = _batch(dataset, info, ("fr-en", "es"), 4)
    for name in ("weam", "mlm", "tlm"):
        torch.manual_seed(0)
        objective = PretrainingObjective(build_model(checkpoint, info.vocab_size), ObjectiveConfig(name=name))
        optimizer = torch.optim.AdamW(objective.parameters(), lr=3e-3)
        losses = []
        for _ in range(6):
            out = objective(batch)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            losses.append(out.loss.item())
        assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], (name, losses)
        if name == "weam":
            assert out.tokens["xpred"] > 0


def test_checkpoint_tokenizer_guard(bert_dataset, swapped_checkpoint, tmp_path, capsys):
    checkpoint, dataset = bert_dataset
    tokenizer_dir = dataset / "tokenizer"
    check_model_vocabulary(str(checkpoint), tokenizer_dir, "match", "run.yaml")  # its own tokenizer: fine
    with pytest.raises(ConfigError) as refused:
        check_model_vocabulary(str(swapped_checkpoint), tokenizer_dir, "match", "run.yaml")
    message = str(refused.value)
    assert "\n" not in message and str(swapped_checkpoint) in message and str(tokenizer_dir) in message
    assert re.search(r"\(2 of \d+ tokens have other ids\)", message)
    assert f"tokenizer.path: {swapped_checkpoint}" in message
    check_model_vocabulary(str(swapped_checkpoint), tokenizer_dir, "resize", "run.yaml")  # asked for explicitly
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    shutil.copy(checkpoint / "config.json", bare)
    with pytest.raises(ConfigError, match="holds no tokenizer"):
        check_model_vocabulary(str(bare), tokenizer_dir, "match", "run.yaml")

    # A run pairing the checkpoint with that dataset stops before any process group: exit 2, one line.
    cfg = run_config(dataset, tmp_path / "refused", model=str(swapped_checkpoint))
    assert train_module.main(["--config", str(write_config(cfg, tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("weam_ds.train: error: ") and "differ" in err
    assert not (tmp_path / "refused").exists()
    with pytest.raises(ConfigError, match="model_vocab: 'grow' is not one of match, resize"):
        load_run_config(write_config({**cfg, "model_vocab": "grow"}, tmp_path))


def test_resize_happens_only_when_asked(bert_dataset, tmp_path):
    checkpoint, _ = bert_dataset
    rows = AutoConfig.from_pretrained(str(checkpoint)).vocab_size
    with pytest.raises(ConfigError, match=f"{rows} rows, fewer than the {rows + 50} tokens.*model_vocab: resize"):
        build_model(checkpoint, rows + 50)
    grown = build_model(checkpoint, rows + 50, resize_vocab=True)
    assert grown.get_input_embeddings().weight.shape[0] == rows + 50
    assert grown.cls.predictions.bias.shape == (rows + 50,)
    assert grown.cls.predictions.decoder.bias is grown.cls.predictions.bias
    # A table longer than the tokenizer (padded) is used as it is unless a resize is asked for.
    grown.save_pretrained(str(tmp_path))
    assert build_model(tmp_path, rows).get_input_embeddings().weight.shape[0] == rows + 50
    assert build_model(tmp_path, rows, resize_vocab=True).get_input_embeddings().weight.shape[0] == rows


@pytest.mark.slow
def test_resized_checkpoint_trains_under_zero3(bert_dataset, tmp_path):
    """``model_vocab: resize`` under ZeRO-3 (one process): an XLM-R-shaped checkpoint whose table is 40 rows
    longer than the dataset's tokenizer is cut to it, the MLM head's bias too (that bias kept its old size
    under ZeRO-3 before, and the first step failed with a raw "expanded size of the tensor" error)."""
    checkpoint, dataset = bert_dataset
    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    rows = len(tok)
    longer = tmp_path / "xlmr-longer"
    build_model("tiny", rows + 40, pad_token_id=tok.pad_token_id, bos=tok.cls_token_id,
                eos=tok.sep_token_id).save_pretrained(str(longer))
    tok.save_pretrained(str(longer))
    cfg = run_config(dataset, tmp_path / "resized", steps=2, model=str(longer), model_vocab="resize",
                     data={"eval_batches": 0}, train={"steps": 2, "log_interval": 1, "checkpoint_interval": 2})
    run = subprocess.run([sys.executable, "-m", "weam_ds.train", "--config", str(write_config(cfg, tmp_path))],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert AutoConfig.from_pretrained(str(tmp_path / "resized" / "model")).vocab_size == rows
    assert all(np.isfinite(r["loss"]) for r in metric_rows(tmp_path / "resized"))


@pytest.mark.slow
def test_two_rank_zero3_run_mixes_text_and_pairs_from_the_checkpoint(bert_dataset, tmp_path):
    """The mBERT-shaped checkpoint, continued under ZeRO-3 on 2 ranks on the dataset built with its own
    tokenizer: fr-en pairs and Spanish text from one mixture, both in the per-pair losses."""
    checkpoint, dataset = bert_dataset
    cfg = run_config(dataset, tmp_path / "mixed", steps=8, model=str(checkpoint),
                     data={"monolingual_weight": 0.4, "eval_batches": 1},
                     train={"steps": 8, "log_interval": 4, "eval_interval": 1, "checkpoint_interval": 8})
    run = train(cfg, tmp_path)
    assert "ZeRO-3" in run.stderr and "'es', 'fr-en'" in run.stderr
    assert [r["step"] for r in metric_rows(tmp_path / "mixed")] == list(range(1, 9))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "mixed" / "tensorboard"))
    events.Reload()
    assert {"loss_by_pair/es", "loss_by_pair/fr-en"} <= set(events.Tags()["scalars"])
    # Steps draw other mixes of text and pairs (text rows have fewer loss terms): the fixed dev batch tells.
    evaluated = [e.value for e in events.Scalars("eval/loss")]
    assert len(evaluated) == 8 and evaluated[-1] < evaluated[0]


def _readme_block(marker: str) -> dict:
    """The documentation's YAML block whose first line is the comment ``marker``."""
    (block,) = [b for b in yaml_blocks() if b.startswith(f"# {marker}")]
    return yaml.safe_load(block)


def test_readme_recipe_weam_as_in_the_paper_is_valid(bert_dataset, tmp_path):
    """The recipe's prep.yaml and run.yaml, with this test's checkpoint and dataset in place of mBERT's."""
    checkpoint, dataset = bert_dataset
    prep = _readme_block("prep.yaml: WEAM as in the paper")
    assert prep["tokenizer"] == {"path": "models/bert-base-multilingual-cased"}
    (tmp_path / "corpus.de-en.de").write_text("Hallo.\n")
    (tmp_path / "corpus.de-en.en").write_text("Hello.\n")
    prep["tokenizer"]["path"] = str(checkpoint)
    prep["output_dir"] = str(tmp_path / "prep")
    prep["pairs"] = [{**p, **{side: str(tmp_path / Path(p[side]).name) for side in ("src", "tgt")}}
                     for p in prep["pairs"][:1]]
    config_from_dict(prep, where="README prep.yaml")

    run = _readme_block("run.yaml: WEAM as in the paper")
    assert run["model"] == "models/bert-base-multilingual-cased" and run["objective"]["name"] == "weam"
    run.update(model=str(checkpoint), output_dir=str(tmp_path / "run"))
    run["data"]["datasets"] = [str(dataset)]
    run["data"]["pairs"] = None
    cfg = load_run_config(write_config(run, tmp_path))
    assert isinstance(cfg, RunConfig) and cfg.model_vocab == "match" and cfg.optimizer.lr <= 1e-4
    assert read_manifest(dataset)["tokenizer"]["source"] == str(checkpoint.resolve())
