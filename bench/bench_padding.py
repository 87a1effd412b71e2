"""Benchmark: the share of encoded positions that are padding, without and with length bucketing and row packing.

The training stream (``weam_ds.data.TrainStream``) is iterated as training iterates it, and each batch is
counted as its objective encodes it (``weam_ds.data.padding_counts``: 2B × max(source, target width) for weam
and mlm stacked, B × (source + target) for tlm, R rows × W positions packed). Two datasets, both built by
data_prep:

- the demo dataset (gettext catalogs: many short interface strings, a long tail of help texts), built as
  ``make demo`` builds it when missing;
- a synthetic one with a realistic length spread: sentences of log-normal word counts (mean 20 words, as in
  news and web text), three made-up source languages translated word by word into a made-up target (a
  word gives one, two or no target words), so that each pair's lengths differ as translations do.

For each: batches of 16, 32 (the default), 64 and 256 pairs and a ``batch_tokens`` budget, in draw order
(``bucket_pool: 1``) and bucketed (the default pool), both with the 2B sentences stacked (``pack_rows:
false``); then bucketed and packed into rows (the default, weam_ds.packing: weam's and mlm's 2B sentences,
tlm's B pairs [x; y]). Stacked, WEAM and MLM pad both sides of a pair to one width, so a pair whose sides differ
in length is padded whatever the batching: the "floor" column is that share, the least any stacked batching
reaches on those samples; packing goes below it. The project's goal: padding at most 10% at the default
settings.

    python bench/bench_padding.py [--dataset out/demo/dataset] [--synthetic out/bench/synthetic] [--samples N]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from transformers import AutoTokenizer

from data_prep.typed_config import from_dict
from weam_ds.batch import TokenInfo
from weam_ds.config import DataConfig, MaskingConfig
from weam_ds.data import Corpus, TrainStream, padding_counts
from weam_ds.objectives import OBJECTIVES, STACKED

from bench_stream import demo_dataset  # bench/ is this script's directory

GOAL = 0.10
SYLLABLES = {  # each made-up language's syllable inventory, so that their words tokenize differently
    "qaa": ("ka", "to", "ri", "men", "sa", "lo", "ve", "dun", "pi", "ra"),
    "qab": ("sch", "ei", "ber", "ung", "ta", "lich", "ge", "en", "hof", "mi"),
    "qac": ("ku", "ssa", "lla", "tä", "ne", "vi", "ri", "ko", "nen", "ju"),
    "qtz": ("the", "an", "ing", "ro", "st", "er", "ow", "ch", "al", "ed"),
}


def _lexicon(lang: str, size: int, rng: np.random.Generator) -> list[str]:
    """``size`` distinct made-up words of 1-4 syllables, in a random order (their frequency rank)."""
    words: set[str] = set()
    syllables = SYLLABLES[lang]
    while len(words) < size:
        words.add("".join(rng.choice(syllables, size=rng.integers(1, 5))))
    return list(rng.permutation(sorted(words)))


def synthetic_pairs(src_lang: str, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (source, target) sentence pairs: log-normal word counts (mean 20), Zipfian words, and a word-by-word
    translation in which a source word gives one (75%), two (15%) or no (10%) target words."""
    rng = np.random.default_rng(seed)
    src_words, tgt_words = _lexicon(src_lang, 3000, rng), _lexicon("qtz", 3000, rng)
    zipf = 1 / np.arange(1, len(src_words) + 1)
    zipf /= zipf.sum()
    translation = rng.permutation(len(tgt_words))
    sigma = 0.6
    counts = np.maximum(1, np.round(rng.lognormal(np.log(20) - sigma ** 2 / 2, sigma, n))).astype(int)
    pairs = []
    for count in counts:
        words = rng.choice(len(src_words), size=count, p=zipf)
        target = []
        for w, fate in zip(words, rng.random(count)):
            if fate < 0.90:
                target.append(tgt_words[translation[w]])
            if fate >= 0.75:
                target.append(tgt_words[translation[(w + 1) % len(tgt_words)]])
        pairs.append((" ".join(src_words[w] for w in words), " ".join(target or tgt_words[:1])))
    return pairs


def synthetic_dataset(out: Path, per_pair: int) -> Path:
    """The synthetic dataset under ``out`` (three pairs as tsv files, built by data_prep), unless already there."""
    dataset = out / "dataset"
    if (dataset / "manifest.json").is_file():
        return dataset
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for k, lang in enumerate(("qaa", "qab", "qac")):
        path = out / f"{lang}-qtz.tsv"
        path.write_text("".join(f"{s}\t{t}\n" for s, t in synthetic_pairs(lang, per_pair, seed=k)), encoding="utf-8")
        pairs.append({"src_lang": lang, "tgt_lang": "qtz", "format": "tsv", "path": str(path)})
    config = {"output_dir": str(dataset), "tokenizer": {"train": {"vocab_size": 4000}},
              "aligner": {"method": "eflomal", "symmetrize": "grow-diag-final-and"},
              "splits": {"dev": 100, "test": 100}, "pairs": pairs}
    (out / "prep.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run([sys.executable, "-m", "data_prep", "--config", str(out / "prep.yaml")], check=True)
    return dataset


def measure(dataset: Path, objective: str, samples: int, **data) -> tuple[float, float]:
    """(padding fraction, the floor for weam/mlm stacked) over the batches holding the stream's first ``samples``
    pairs."""
    cfg = from_dict(DataConfig, {"datasets": [str(dataset)], "workers": 0, "verify_sha256": False, **data})
    corpus = Corpus.open(cfg)
    info = TokenInfo.from_tokenizer(AutoTokenizer.from_pretrained(str(corpus.tokenizer_dir)))
    stream = iter(TrainStream(corpus, cfg, MaskingConfig(), info, seed=0, rank=0, objective=objective))
    encoded = padded = mismatch = tight = taken = 0
    while taken < samples:
        batch, _ = next(stream)
        positions, padding = padding_counts(batch, objective)
        encoded, padded, taken = encoded + positions, padded + padding, taken + len(batch["src_ids"])
        src, tgt = batch["src_attention_mask"].sum(1), batch["tgt_attention_mask"].sum(1)
        # At best every row is as wide as its pair's longer side: 2·max(s, t) positions, |s - t| of them padding.
        mismatch += int((src - tgt).abs().sum())
        tight += int(2 * (src.maximum(tgt)).sum())
    return padded / encoded, mismatch / tight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=Path("out/demo/dataset"))
    parser.add_argument("--synthetic", type=Path, default=Path("out/bench/synthetic"),
                        help="where the synthetic dataset is built (once)")
    parser.add_argument("--samples", type=int, default=16384, help="pairs counted per setting")
    parser.add_argument("--batch-tokens", type=int, default=8192)
    args = parser.parse_args()
    defaults = DataConfig(datasets=["-"])
    datasets = {"demo": demo_dataset(args.dataset), "synthetic": synthetic_dataset(args.synthetic, 4000)}
    settings = [("16 pairs", {"batch_size": 16}), ("32 pairs (default)", {}), ("64 pairs", {"batch_size": 64}),
                ("256 pairs", {"batch_size": 256}),
                (f"{args.batch_tokens} positions", {"batch_size": None, "batch_tokens": args.batch_tokens})]
    print(f"\npadding benchmark: share of encoded positions that are padding, max length {defaults.max_length}, "
          f"first {args.samples:,} pairs of the stream; bucketed: bucket_pool {defaults.bucket_pool} "
          f"(the default); goal <= {GOAL:.0%}")
    print(f"  {'dataset':<10} {'objective':<9} {'batch':<20} {'draw order':>10} {'bucketed':>9} {'floor':>6} "
          f"{'packed':>7}  s")
    for name, dataset in datasets.items():
        for objective in ("weam", "tlm"):
            stacked = OBJECTIVES[objective].layout is STACKED  # the floor is a stacked pair's
            for label, data in settings:
                start = time.perf_counter()
                before, _ = measure(dataset, objective, args.samples, bucket_pool=1, pack_rows=False, **data)
                after, floor = measure(dataset, objective, args.samples, pack_rows=False, **data)
                packed = measure(dataset, objective, args.samples, **data)[0]
                mark = "" if packed <= GOAL else "  (above the goal)"
                print(f"  {name:<10} {objective + ('/mlm' if stacked else ''):<9} {label:<20} {before:10.1%} "
                      f"{after:9.1%} {_share(floor if stacked else None):>6} {_share(packed):>7} "
                      f"{time.perf_counter() - start:3.0f}{mark}")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    main()
