"""data_prep: parallel corpora → cleaned, tokenized, word-aligned WebDataset shards plus a manifest.

The dataset directory it writes is the contract with training and evaluation; its format lives in
`data_prep.shard_format` (one sample) and `data_prep.manifest` (the directory).
"""
__version__ = "0.1.0"


class PrepError(Exception):
    """A problem with the user's input or config, reported as one line and a non-zero exit."""
