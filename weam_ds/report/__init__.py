"""``python -m weam_ds.report --study STUDY_DIR --out REPORT_DIR``: the scaling study's report, built from the
study's registry alone (``weam_ds.registry``).

It answers two questions, one table each: (1) what WEAM gains over MLM and over TLM, per model size and number
of pre-training languages, on three language groups; (2) how scores grow with parameters and with training
compute per objective, with the transfer gap. It writes into REPORT_DIR:

- ``report.md`` and ``report.html`` (the same content, the plots embedded as data URIs: one self-contained
  file): first the Answer to both questions per size in plain sentences, with a verdict on whether the gain
  grows with the number of languages, then the evidence: a summary paragraph generated from the tables'
  numbers, how the numbers are made, the tables and plots;
- PNG plots: ``gain_vs_languages.png``, ``score_vs_parameters.png``, ``score_vs_flops.png``,
  ``heatmap_best_cell.png``, ``transfer_gap_vs_size.png``;
- ``results.csv``: one row per cell × task × language × evaluation seed, over every combination some cell has,
  the score left empty where that cell has none;
- ``tensorboard/<cell>/``: one hparams entry per cell (its axes; its scores, transfer gaps and cost as metrics),
  for ``tensorboard --logdir REPORT_DIR/tensorboard``.

REPORT_DIR must be new or empty, or an earlier report, replaced only with ``--force``: the report is built beside
it and moved in whole (data_prep.output_dirs), so a rerun never removes what it did not write. A cell without
results is "missing", never 0; the report lists the cells that lack results.

The modules, in the order they build on each other:

- ``results``: the registry's cells and headline scores (``Results``), the language groups, ``results.csv`` and
  the TensorBoard hparams;
- ``stats``: gains and their spread (seed std or paired bootstrap), the trends' intervals and verdicts, the
  scaling rows, the Pareto front, with the equations in its docstring;
- ``method``: how the numbers are made, in the words the report prints (the one place it is written);
- ``answer``: the Answer's paragraphs; ``plots``: the PNGs;
- ``document``: the blocks in order, the tables and summary, Markdown and HTML; ``cli``: the command line.
"""
from weam_ds.report.cli import main
from weam_ds.report.results import headline_metric

__all__ = ["headline_metric", "main"]
