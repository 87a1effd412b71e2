"""Encoder presets: meta builds of every size, published XLM-R parameter counts, the same counts from a config
without building the model, checkpoints that round-trip through AutoModelForMaskedLM, continued pre-training from a
local checkpoint, and the size table CLI."""
from __future__ import annotations

import pytest
import torch
from transformers import (AutoModelForMaskedLM, BertConfig, DebertaV2Config, DebertaV2ForMaskedLM,
                          XLMRobertaXLConfig)

from data_prep.typed_config import ConfigError
from weam_ds.presets import (PRESETS, build_model, count_parameters, encoder_config, main, model_config,
                             parameter_counts, train_flops_per_token)

XLMR_VOCAB = 250002
# Backbone sizes published with XLM-R (Conneau et al. 2020) and XLM-R XL/XXL (Goyal et al. 2021).
PUBLISHED = {"base": 270e6, "large": 560e6, "xl": 3.5e9, "xxl": 10.7e9}


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return build_model("tiny", 1000).eval()


def _ids(vocab: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, vocab, (2, 12), generator=generator)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_on_meta_without_memory(name):
    model = build_model(name, XLMR_VOCAB, meta=True)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert model.config._attn_implementation == "sdpa"
    p = PRESETS[name]
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.num_attention_heads,
            model.config.intermediate_size, model.config.vocab_size) == (p.layers, p.hidden, p.heads, p.ffn, XLMR_VOCAB)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_backbone_counts_match_published_xlmr_sizes(name):
    total = count_parameters(build_model(name, XLMR_VOCAB, meta=True))["total"]
    assert abs(total / PUBLISHED[name] - 1) < 0.03, f"{name}: {total:,} vs published {PUBLISHED[name]:,.0f}"


@pytest.mark.parametrize("name", ["xl", "xxl"])
def test_xl_sizes_use_pre_layernorm_classes(name):
    assert isinstance(model_config(name, XLMR_VOCAB), XLMRobertaXLConfig)
    assert type(build_model(name, XLMR_VOCAB, meta=True)).__name__ == "XLMRobertaXLForMaskedLM"
    assert not isinstance(model_config("large", XLMR_VOCAB), XLMRobertaXLConfig)


@pytest.mark.parametrize("name", ["tiny", "mini"])
def test_counts_follow_the_post_ln_layer_formula(name):
    vocab, p = 1000, PRESETS[name]
    h, f = p.hidden, p.ffn
    # Per layer: q, k, v, attention output (4 h*h + 4 h), FFN in/out (2 h*f + f + h), two LayerNorms (4 h).
    layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
    counts = count_parameters(build_model(name, vocab, meta=True))
    assert counts["non_embedding"] == p.layers * layer + 2 * h  # + the embedding LayerNorm
    assert counts["total"] - counts["non_embedding"] == (vocab + 514 + 1) * h  # word, position, token type
    assert counts["mlm_head"] == h * h + h + 2 * h + vocab  # dense, LayerNorm, decoder bias; decoder weight tied


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("vocab", [1000, XLMR_VOCAB])
def test_counts_from_the_config_are_the_built_models(name, vocab):
    counts = parameter_counts(model_config(name, vocab))
    assert counts == count_parameters(build_model(name, vocab, meta=True))
    assert counts["total"] == counts["embedding"] + counts["non_embedding"]


@pytest.mark.parametrize("config_class, tied", [(BertConfig, True), (XLMRobertaXLConfig, False)])
def test_counts_from_a_checkpoints_config_follow_its_layout_and_resized_vocabulary(config_class, tied, tmp_path):
    # mBERT's layout (two token types, 512 positions) and a pre-LN encoder whose MLM decoder is its own.
    config_class(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 type_vocab_size=2, tie_word_embeddings=tied).save_pretrained(tmp_path)
    for vocab, resize in ((400, False), (600, True), (300, True)):
        counts = parameter_counts(encoder_config(tmp_path, vocab, resize_vocab=resize))
        assert counts == count_parameters(build_model(tmp_path, vocab, meta=True, resize_vocab=resize)), (vocab, resize)


def test_a_model_of_another_layout_is_counted_as_built(tmp_path):
    DebertaV2Config(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64).save_pretrained(tmp_path)
    config = encoder_config(tmp_path, 100)
    assert parameter_counts(config) == count_parameters(build_model(tmp_path, 100, meta=True))


def test_tiny_builds_for_real_and_counts_unique_parameters(tiny):
    assert {p.device.type for p in tiny.parameters()} == {"cpu"}
    assert tiny.get_output_embeddings().weight is tiny.get_input_embeddings().weight
    counts = count_parameters(tiny)
    unique = {p.data_ptr(): p.numel() for _, p in tiny.named_parameters(remove_duplicate=False)}
    assert counts["total"] + counts["mlm_head"] == sum(unique.values())
    backbone = {p.data_ptr() for p in tiny.base_model.parameters()}
    head = {p.data_ptr(): p.numel() for n, p in tiny.named_parameters(remove_duplicate=False)
            if n.startswith("lm_head.") and p.data_ptr() not in backbone}
    assert counts["mlm_head"] == sum(head.values())


def test_saved_preset_reloads_with_automodel_and_identical_logits(tiny, tmp_path):
    ids = _ids(1000)
    with torch.no_grad():
        expected = tiny(input_ids=ids).logits
    tiny.save_pretrained(tmp_path)
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(reloaded) is type(tiny)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_build_from_checkpoint_dir_loads_weights_and_resizes_vocab(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    same = build_model(tmp_path, 1000).eval()
    with torch.no_grad():
        torch.testing.assert_close(same(input_ids=_ids(1000)).logits, tiny(input_ids=_ids(1000)).logits)

    grown = build_model(str(tmp_path), 1200, resize_vocab=True).eval()
    assert grown.config.vocab_size == 1200
    assert grown.config._attn_implementation == "sdpa"
    torch.testing.assert_close(grown.get_input_embeddings().weight[:1000], tiny.get_input_embeddings().weight)
    with torch.no_grad():
        assert grown(input_ids=_ids(1200)).logits.shape == (2, 12, 1200)

    shapes = build_model(tmp_path, 1200, meta=True, resize_vocab=True)
    assert {p.device.type for p in shapes.parameters()} == {"meta"}
    assert count_parameters(shapes) == count_parameters(grown)


def test_checkpoint_without_sdpa_falls_back_to_eager(tmp_path):
    config = DebertaV2Config(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64)
    DebertaV2ForMaskedLM(config).save_pretrained(tmp_path)
    assert build_model(tmp_path, 100).config._attn_implementation == "eager"


def test_unknown_preset_and_bad_checkpoint_dirs_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'.*tiny, mini, base, large, xl, xxl"):
        model_config("huge", 1000)
    with pytest.raises(ConfigError, match=r"'huge' is neither a preset \(tiny, mini, base, large, xl, xxl\)"):
        build_model("huge", 1000)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as empty:
        build_model(tmp_path / "empty", 1000)
    (tmp_path / "no_weights").mkdir()
    model_config("tiny", 1000).save_pretrained(tmp_path / "no_weights")
    with pytest.raises(ConfigError) as no_weights:
        build_model(tmp_path / "no_weights", 1000)
    for error, path in ((empty, tmp_path / "empty"), (no_weights, tmp_path / "no_weights")):
        message = str(error.value)
        assert message.startswith(str(path)) and "\n" not in message


def test_train_flops_terms():
    model = build_model("base", XLMR_VOCAB, meta=True)
    c, n = model.config, count_parameters(model)["non_embedding"]
    flops = train_flops_per_token(c, n)
    assert train_flops_per_token(c, n, seq_len=0, mask_rate=0) == 6 * n
    assert train_flops_per_token(c, n, seq_len=1024) - flops == pytest.approx(12 * c.num_hidden_layers * 512 * 768)
    assert flops - train_flops_per_token(c, n, mask_rate=0) == pytest.approx(6 * 0.15 * (XLMR_VOCAB + 768) * 768)


def test_cli_prints_every_preset(capsys):
    assert main(["--vocab-size", "8000"]) == 0
    stdout = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in stdout.splitlines()[2:]}
    assert list(rows) == ["tiny", "mini", "base", "large", "xl", "xxl"]
    assert rows["base"][1] == "XLMRobertaForMaskedLM" and rows["xxl"][1] == "XLMRobertaXLForMaskedLM"
    assert rows["xl"][2:6] == ["36", "2560", "32", "10240"]
    assert "8000" in stdout.splitlines()[0] and rows["xxl"][-1] == "GFLOP"


def test_batch_flops_agree_with_the_per_token_formula():
    from weam_ds.presets import train_flops

    model = build_model("base", 250002, meta=True)
    non_embedding = count_parameters(model)["non_embedding"]
    lengths = torch.full((40,), 128)
    per_token = train_flops_per_token(model.config, non_embedding, seq_len=128, mask_rate=0.25)
    assert train_flops(model.config, non_embedding, lengths, predicted=40 * 32) == pytest.approx(40 * 128 * per_token)
    # Attention grows with each sentence's own length: one long sentence costs more than two halves.
    assert train_flops(model.config, non_embedding, torch.tensor([256]), 0) > \
        train_flops(model.config, non_embedding, torch.tensor([128, 128]), 0)
