"""Word tagging (UD-POS, PAN-X) by first-subword labelling: a word's tag is predicted at its first subword,
later subwords are ignored. Sentences longer than the recipe's ``max_length`` are split into pieces that fit
(``tag_pieces``, as XTREME's preprocessing does) and their tags joined back, so every word gets a prediction.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from weam_ds.batch import IGNORE
from weam_ds.xtreme_r import metrics
from weam_ds.xtreme_r.pipeline import Outcome, Seed, fine_tune_split_files
from weam_ds.xtreme_r.tag_pieces import join_pieces, reserve_differences, split_sentences
from weam_ds.xtreme_r.tuners import Encoded, Tuner


@dataclass
class PieceLayout:
    """What maps the rows back to the sentences: per row (piece) its sentence and its words' first-subword
    positions (word index within the piece, position in the row), and the number of sentences."""
    owners: list[int]
    firsts: list[list[tuple[int, int]]]
    sizes: list[int]
    sentences: int


class Tagger(Tuner):
    auto_class = "AutoModelForTokenClassification"

    def __init__(self, *args):
        super().__init__(*args)
        counts = Counter(t for e in self.train for t in e.tags)
        self.labels = sorted(counts)
        self.fallback = counts.most_common(1)[0][0]
        """For a word the tokenizer turns into no subword at all (nothing to predict it from); every other word,
        an over-long one included, has its first subword in its piece."""

    def collator(self):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(self.tokenizer)

    def encode(self, examples: list) -> Encoded:
        pieces, owners = split_sentences(self.tokenizer, [e.words for e in examples], self.recipe.max_length)
        enc = self.tokenizer(pieces, is_split_into_words=True, truncation=True, max_length=self.recipe.max_length)
        index = {x: i for i, x in enumerate(self.labels)}
        rows, firsts, done = [], [], Counter()
        for i, (piece, owner) in enumerate(zip(pieces, owners)):
            tags = examples[owner].tags
            offset = done[owner]  # the piece's first word within its sentence
            done[owner] += len(piece)
            seen, mine, labels = set(), [], []
            for pos, word in enumerate(enc.word_ids(i)):
                if word is None or word in seen:
                    labels.append(IGNORE)
                    continue
                seen.add(word)
                mine.append((word, pos))
                labels.append(index.get(tags[offset + word], 0) if tags else 0)
            firsts.append(mine)
            rows.append({**{k: v[i] for k, v in enc.items()}, "labels": labels})
        return Encoded(rows, PieceLayout(owners, firsts, [len(p) for p in pieces], len(examples)))

    def tags(self, logits, layout: PieceLayout) -> list[list[str]]:
        """Each sentence's tags from its pieces' logits."""
        piece_tags = []
        for firsts, size, row in zip(layout.firsts, layout.sizes, logits):
            tags = [self.fallback] * size
            for word, pos in firsts:
                tags[word] = self.labels[int(row[pos].argmax())]
            piece_tags.append(tags)
        return join_pieces(piece_tags, layout.owners, layout.sentences)

    def dev_score(self, prediction, examples: list, encoded: Encoded) -> float:
        guess = self.tags(prediction.predictions, encoded.layout)
        return metrics.tagging([e.tags for e in examples], guess)["f1"]

    def predict_lines(self, examples: list) -> list[str]:
        encoded = self.encode(examples)
        return [line for tags in self.tags(self.logits(encoded.rows), encoded.layout) for line in tags + [""]]


def run_seed(seed: Seed, tokenizer) -> Outcome:
    from transformers import AutoConfig

    outcome = fine_tune_split_files(seed, tokenizer, Tagger,
                                    lambda examples: [line for e in examples for line in e.tags + [""]], "sentences")
    model_type = AutoConfig.from_pretrained(str(seed.model_dir), local_files_only=True).model_type
    outcome.differences += reserve_differences(tokenizer, model_type)
    return outcome
