"""Sentence-pair classification (XNLI, PAWS-X): the pair through the encoder, a label from its ``<s>`` state
(transformers' sequence-classification head), fine-tuned on English, predicted in every language."""
from __future__ import annotations

from weam_ds.xtreme_r.pipeline import Outcome, Seed, fine_tune_split_files
from weam_ds.xtreme_r.tuners import Encoded, Tuner


class Classifier(Tuner):
    auto_class = "AutoModelForSequenceClassification"

    def __init__(self, *args):
        super().__init__(*args)
        self.labels = sorted({e.label for e in self.train})

    def collator(self):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer)

    def encode(self, examples: list) -> Encoded:
        enc = self.tokenizer([e.first for e in examples], [e.second for e in examples], truncation=True,
                             max_length=self.recipe.max_length)
        index = {x: i for i, x in enumerate(self.labels)}
        return Encoded([{**{k: v[i] for k, v in enc.items()}, "labels": index.get(e.label, 0)}
                        for i, e in enumerate(examples)])

    def dev_score(self, prediction, examples: list, encoded: Encoded) -> float:
        return 100.0 * float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())

    def predict_lines(self, examples: list) -> list[str]:
        return [self.labels[i] for i in self.logits(self.encode(examples).rows).argmax(-1)]


def run_seed(seed: Seed, tokenizer) -> Outcome:
    return fine_tune_split_files(seed, tokenizer, Classifier, lambda examples: [e.label for e in examples],
                                 "examples")
