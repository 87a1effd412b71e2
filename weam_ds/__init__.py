"""weam_ds: WEAM pre-training on DeepSpeed, export, XTREME-R evaluation and reports.

Reads data_prep's dataset directories (``data_prep.manifest``, ``data_prep.shard_format``).
"""
__version__ = "0.1.0"
