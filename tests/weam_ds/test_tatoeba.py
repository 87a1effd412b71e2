"""Tatoeba as XTREME-R runs it: the direction of the official files, the pooled layer, the maximum length, and the
encoder of the checkpoints retrieval embeds with.

The stand-in encoder is a real tiny XLM-R model whose tokenizer gives a German word and its English translation
the same id (and no word the unknown id): a sentence and its word-for-word translation are the same input, so
they embed identically and any retrieval error comes from the code under test, never from the model.
"""
from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import (AutoTokenizer, BertConfig, PreTrainedTokenizerFast, XLMRobertaConfig,
                          XLMRobertaForMaskedLM, XLMRobertaForQuestionAnswering)

from weam_ds.xtreme_r.encoders import load_encoder
from weam_ds.xtreme_r.pipeline import Seed
from weam_ds.xtreme_r.recipe import Recipe
from weam_ds.xtreme_r.score import score
from weam_ds.xtreme_r.tasks import TASKS
from weam_ds.xtreme_r.tatoeba import OFFICIAL_MAX_LENGTH, SQUAD_EPOCHS, clip_length, official_layer, run_seed

# English sentence, its German word-for-word translation.
PAIRS = [
    ("the dog sleeps", "der hund schläft"),
    ("a cat eats fish", "eine katze frisst fisch"),
    ("the bird sings", "der vogel singt"),
    ("a dog eats", "ein hund frisst"),
    ("the cat sleeps", "die katze schläft"),
    ("birds sing", "vögel singen"),
]
POSITIONS = 66
"""The stand-in's position embeddings: 64 tokens after XLM-R's padding offset, fewer than the official 512."""


def _shared_id_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level over the English words; its normalizer first replaces each German word by its translation."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    translations = {}
    for english, german in PAIRS:
        for e, g in zip(english.split(), german.split()):
            vocab.setdefault(e, len(vocab))
            translations[g] = e
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.Replace(Regex(rf"\b{g}\b"), e)
                                               for g, e in translations.items()])
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                           special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", cls_token="<s>", sep_token="</s>")


def _tiny_config(vocab_size: int) -> XLMRobertaConfig:
    return XLMRobertaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=POSITIONS, pad_token_id=1)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """{"squad": a QA model dir, "raw": a masked-LM dir}: the same random encoder weights, the shared-id tokenizer."""
    root = tmp_path_factory.mktemp("stand_in")
    tokenizer = _shared_id_tokenizer()
    config = _tiny_config(max(tokenizer.get_vocab().values()) + 1)
    torch.manual_seed(0)
    qa = XLMRobertaForQuestionAnswering(config)
    mlm = XLMRobertaForMaskedLM(config)
    mlm.roberta.load_state_dict(qa.roberta.state_dict(), strict=False)
    dirs = {"squad": root / "squad", "raw": root / "raw"}
    for model, path in ((qa, dirs["squad"]), (mlm, dirs["raw"])):
        model.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
    return dirs


def test_the_stand_in_makes_a_sentence_and_its_translation_one_input(stand_ins):
    tokenizer = AutoTokenizer.from_pretrained(str(stand_ins["raw"]))
    inputs = [[tokenizer(s)["input_ids"] for s in pair] for pair in PAIRS]
    assert all(e == g and tokenizer.unk_token_id not in e for e, g in inputs)
    assert len({tuple(e) for e, _ in inputs}) == len(PAIRS)


def _write_download(data, lang: str, sort_english: bool) -> list[int]:
    """``tatoeba/<lang>-en.<lang>`` as LASER ships it and ``<lang>-en.en``, sorted when ``sort_english`` as
    XTREME's ``tatoeba_preprocess`` writes it. Returns the gold of each English line as the official labels hold
    it: the index of the German sentence it translates."""
    folder = data / "tatoeba"
    folder.mkdir(parents=True, exist_ok=True)
    order = sorted(range(len(PAIRS)), key=lambda i: PAIRS[i][0]) if sort_english else list(range(len(PAIRS)))
    (folder / f"{lang}-en.{lang}").write_text("".join(f"{g}\n" for _, g in PAIRS), encoding="utf-8")
    (folder / f"{lang}-en.en").write_text("".join(f"{PAIRS[i][0]}\n" for i in order), encoding="utf-8")
    return order


def _seed(tmp_path, stand_ins, squad: bool, **recipe) -> Seed:
    """Seed 1 of a run on ``tmp_path/data``'s German Tatoeba files, embedding with the QA stand-in (``squad``) or
    the raw masked-LM one."""
    values = {"learning_rate": 0.0, "epochs": 0, "batch_size": 4, "max_length": OFFICIAL_MAX_LENGTH, **recipe}
    return Seed(stand_ins["raw"], tmp_path / "data", TASKS["tatoeba"], ["de"], Recipe(**values), 1, tmp_path / "out",
                squad_model=stand_ins["squad"] if squad else None)


def test_the_download_layout_scores_100_in_the_official_direction_and_not_reversed(stand_ins, tmp_path):
    gold = _write_download(tmp_path / "data", "de", sort_english=True)
    assert gold != sorted(gold)
    labels = tmp_path / "official_labels" / "tatoeba"
    labels.mkdir(parents=True)
    (labels / "test-de.tsv").write_text("".join(f"{i}\n" for i in gold))
    seed = _seed(tmp_path, stand_ins, squad=True)
    outcome = run_seed(seed, AutoTokenizer.from_pretrained(str(seed.model_dir)))
    work, details = seed.work, outcome.details

    assert outcome.unscored and "sorted" in outcome.unscored
    assert details["xx2en"] is None and not (seed.out / "labels").exists()  # the gold is hidden: no labels
    official = score(work / "predictions", labels.parent, languages=["de"])["tatoeba"]
    assert official["accuracy"]["de"] == 100.0
    # The other direction holds, per German line, the sorted position of its English sentence: the inverse
    # permutation, which agrees with the gold only where the sorting left a sentence's own index in place.
    reversed_ = score(work / "xx2en" / "predictions", labels.parent, languages=["de"])["tatoeba"]
    inverse = [gold.index(i) for i in range(len(gold))]
    agree = sum(a == b for a, b in zip(inverse, gold))
    assert reversed_["accuracy"]["de"] == pytest.approx(100 * agree / len(gold)) and agree < len(gold)

    assert details["encoder"] == "squad" and details["layer"] == official_layer(_tiny_config(8))
    assert details["max_length"] == POSITIONS - 2
    assert any(d.startswith("maximum length: 64 tokens") for d in outcome.differences)
    assert not any(d.startswith("encoder") for d in outcome.differences)
    assert SQUAD_EPOCHS in outcome.differences  # run_tatoeba.sh's SQuAD model is a 2-epoch one
    json.dumps(details)  # it goes into result.json


def test_a_line_aligned_set_is_labelled_and_scored_in_both_directions(stand_ins, tmp_path):
    _write_download(tmp_path / "data", "de", sort_english=False)
    seed = _seed(tmp_path, stand_ins, squad=False, max_length=32)
    outcome = run_seed(seed, AutoTokenizer.from_pretrained(str(seed.model_dir)),
                       why_raw="no SQuAD v1.1 in the download")
    labels = seed.out / "labels" / "test"
    assert outcome.unscored is None and outcome.details["encoder"] == "raw"
    assert score(seed.work / "predictions", labels, languages=["de"])["tatoeba"]["accuracy"]["de"] == 100.0
    assert outcome.details["xx2en"]["accuracy"]["de"] == 100.0
    assert (labels / "tatoeba" / "test-de.tsv").read_text().split() == [str(i) for i in range(len(PAIRS))]
    encoder_line = next(d for d in outcome.differences if d.startswith("encoder"))
    assert "no SQuAD v1.1 in the download" in encoder_line
    assert any("32 tokens" in d and "recipe" in d for d in outcome.differences)
    assert SQUAD_EPOCHS not in outcome.differences  # no SQuAD model: its departure does not apply


def test_squad_encoder_must_be_a_qa_model(stand_ins, tmp_path):
    _write_download(tmp_path / "data", "de", sort_english=False)
    seed = _seed(tmp_path, stand_ins, squad=True)
    seed.squad_model = stand_ins["raw"]
    with pytest.raises(ValueError, match="ForMaskedLM"):
        run_seed(seed, AutoTokenizer.from_pretrained(str(seed.model_dir)))


@pytest.mark.parametrize("model_type, depth, script_layer, script_nlayer", [
    ("bert", 12, 7, 12),  # run_tatoeba.sh, bert-base-multilingual-cased
    ("xlm-roberta", 24, 13, 24),  # run_tatoeba.sh, xlm-roberta-large
])
def test_official_layer_is_the_scripts_hidden_state(model_type, depth, script_layer, script_nlayer):
    # evaluate_retrieval.py: the last NLAYER of the depth + 1 hidden states, entry LAYER of those.
    expected = list(range(depth + 1))[-script_nlayer:][script_layer]
    config = (BertConfig if model_type == "bert" else XLMRobertaConfig)(num_hidden_layers=depth)
    assert official_layer(config) == expected
    for other in (1, 2, 4, 12, 36, 48):  # another depth: the same relative depth
        layer = official_layer((type(config))(num_hidden_layers=other))
        assert 1 <= layer <= other and abs(layer / other - expected / depth) <= 0.5 / other


def test_official_layer_is_an_error_for_a_model_type_without_one():
    from transformers import DistilBertConfig

    with pytest.raises(ValueError, match="distilbert.*set `layer`"):
        official_layer(DistilBertConfig())


def test_maximum_length_is_clipped_to_the_positions_of_the_model(caplog):
    with caplog.at_level(logging.WARNING):
        assert clip_length(512, XLMRobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
        assert clip_length(512, BertConfig(max_position_embeddings=512)) == 512
        assert not caplog.records
        assert clip_length(512, XLMRobertaConfig(max_position_embeddings=130, pad_token_id=1)) == 128
        assert clip_length(512, BertConfig(max_position_embeddings=64)) == 64
        assert clip_length(32, BertConfig(max_position_embeddings=64)) == 32
    assert [r.getMessage() for r in caplog.records] == [
        "tatoeba: maximum length 512 clipped to 128, the positions the model has",
        "tatoeba: maximum length 512 clipped to 64, the positions the model has"]


def test_load_encoder_takes_the_encoder_of_qa_and_masked_lm_checkpoints(stand_ins, tmp_path):
    expected = XLMRobertaForQuestionAnswering.from_pretrained(str(stand_ins["squad"])).roberta.state_dict()
    for kind in ("squad", "raw"):
        encoder = load_encoder(stand_ins[kind])
        assert type(encoder).__name__ == "XLMRobertaModel" and encoder.pooler is None
        state = encoder.state_dict()
        assert state.keys() == {k for k in expected if not k.startswith("pooler.")}
        assert all(torch.equal(state[k], expected[k]) for k in state)
    # A checkpoint short of encoder weights (config asking for a layer it never saved) is an error.
    broken = tmp_path / "broken"
    XLMRobertaForMaskedLM.from_pretrained(str(stand_ins["raw"])).save_pretrained(str(broken))
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match=r"broken: the checkpoint lacks \d+ encoder weights \(.*layer\.2\."):
        load_encoder(broken)


@pytest.mark.parametrize("task", ["mewslix", "lareqa"])
def test_dual_encoders_state_their_pooling_as_a_protocol_difference(stand_ins, task):
    from weam_ds.xtreme_r.dual_encoder import DUPLICATES_MASKED, DualEncoder, RetrievalTuner
    from weam_ds.xtreme_r.encoders import POOLINGS
    from weam_ds.xtreme_r.recipe import RECIPES, load_recipe

    recipe = load_recipe(TASKS[task], RECIPES)
    tokenizer = AutoTokenizer.from_pretrained(str(stand_ins["raw"]))
    assert RetrievalTuner(stand_ins["raw"], tokenizer, recipe).differences == [POOLINGS[recipe.pooling].difference,
                                                                               DUPLICATES_MASKED]
    assert "pooler output" in POOLINGS[recipe.pooling].difference
    # Each pooling named in the registry is the one the model embeds with.
    enc = tokenizer(["the dog sleeps", "birds sing"], padding=True, return_tensors="pt")
    encoder = load_encoder(stand_ins["raw"])
    with torch.no_grad():
        states = encoder(**enc).last_hidden_state
        for name, pooling in POOLINGS.items():
            embedded = DualEncoder(encoder, name).embed(enc["input_ids"], enc["attention_mask"])
            expected = torch.nn.functional.normalize(pooling.pool(states, enc["attention_mask"]), dim=-1)
            assert torch.allclose(embedded, expected)
    assert not torch.allclose(POOLINGS["cls"].pool(states, enc["attention_mask"]),
                              POOLINGS["mean"].pool(states, enc["attention_mask"]))
    with pytest.raises(ValueError, match="pooling 'max'"):
        DualEncoder(encoder, "max")
