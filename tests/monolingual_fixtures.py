"""An mBERT-shaped checkpoint built here (a WordPiece tokenizer trained on the demo catalogs and a tiny
BertForMaskedLM, nothing downloaded) and a dataset built for it with data_prep's ``tokenizer.path``: fr-en
pairs beside monolingual Spanish text. Used by tests of monolingual text and of continued pre-training;
built once per test run, whichever test module (on whichever pytest-xdist worker) asks first; read-only."""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

from conftest import catalog_pairs, write_moses
from data_prep.build import build
from data_prep.config import config_from_dict

from fixtures.shared import built_once

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAIRS = 260
"""fr-en pairs, and Spanish sentences, in the dataset (dev and test take 20 of each)."""


def wordpiece_tokenizer(texts: list[str], vocab_size: int) -> BertTokenizerFast:
    """A cased WordPiece tokenizer as mBERT's ([CLS] ... [SEP], ## continuations), trained on ``texts``."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS,
                                                             show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", do_lower_case=False)


def save_bert_checkpoint(tokenizer: BertTokenizerFast, directory: Path) -> Path:
    """A tiny randomly initialised BertForMaskedLM (mBERT's architecture and special tokens) with its tokenizer."""
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id)
    BertForMaskedLM(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def bert_checkpoint_and_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint dir, dataset dir): the dataset's tokenizer is the checkpoint's (data_prep tokenizer.path)."""
    return built_once(tmp_path_factory, "mbert", _build_bert_checkpoint_and_dataset)


def _build_bert_checkpoint_and_dataset(tmp: Path) -> tuple[Path, Path]:
    fr_en = catalog_pairs("fr", PAIRS)
    spanish = [es for es, _ in catalog_pairs("es", PAIRS)]
    texts = [side for pair in fr_en for side in pair] + spanish
    checkpoint = save_bert_checkpoint(wordpiece_tokenizer(texts, 900), tmp / "mbert-tiny")
    src, tgt = write_moses(tmp, "fr-en", fr_en)
    (tmp / "es.txt").write_text("".join(f"{s}\n" for s in spanish), encoding="utf-8")
    cfg = config_from_dict({
        "output_dir": str(tmp / "dataset"),
        "tokenizer": {"path": str(checkpoint)},
        "aligner": {"samplers": 1},  # as conftest.small_config: a third of eflomal's time
        "splits": {"dev": 20, "test": 20},
        "shards": {"max_samples": 100, "max_bytes": 1 << 20},
        "workers": 1,
        "pairs": [{"src_lang": "fr", "tgt_lang": "en", "format": "moses", "src": str(src), "tgt": str(tgt)}],
        "monolingual": [{"lang": "es", "format": "text", "path": str(tmp / "es.txt")}],
    })
    build(cfg)
    return checkpoint, Path(cfg.output_dir)
