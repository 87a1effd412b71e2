"""How the report's numbers are made, in the words the report prints: the one place its protocol is written for
a reader (the Answer's method, the section "How the numbers are made", the note above question (2)'s table).
The statistics themselves, as equations, open ``weam_ds.report.stats``."""
from __future__ import annotations

from weam_ds.report.results import Results, headline_metric
from weam_ds.report.stats import CONFIDENCE, MIN_SEEDS_FOR_STD, RESAMPLES

ANSWER_METHOD = (
    "Method: a gain is WEAM's score minus the baseline's on all evaluated languages, averaged over train seeds; "
    f"the interval of its change from the fewest pre-training languages to the most is the change ± twice its "
    f"standard error from the spread over train seeds where both ends have {MIN_SEEDS_FOR_STD} or more seeds, "
    f"else the central {CONFIDENCE:.0%} of a bootstrap ({RESAMPLES:,} resamples) that redraws train seeds and "
    "evaluation examples together; the verdict is grows or shrinks when that interval excludes 0, cannot tell "
    "when it includes 0. A score is the mean over tasks of each task's headline metric on all evaluated "
    "languages, the transfer gap English minus the other languages averaged over the tasks that score English, "
    "both averaged over train seeds at each size's largest language subset.")

SCALING_METHOD = (
    "Score: the mean over all evaluated languages (mean ± std over train seeds where there are several); transfer "
    "gap: English minus the mean of the other evaluated languages; train FLOPs and GPU-hours: the mean over the "
    "row's cells that recorded a cost.")


def how_the_numbers_are_made(results: Results) -> list[tuple]:
    """The section's paragraphs: scoring (with each task's metric, splits and languages), the language groups,
    the gains and their spread."""
    return [
        ("p", " ".join(["Each task is scored by its headline metric, per cell and language the mean over evaluation "
                        "(fine-tuning) seeds; a group of languages scores the mean over them, only where the cell has "
                        "every one.", *(_task_line(results, task) for task in results.tasks)])),
        ("p", "Languages every cell saw: evaluated languages that the pre-training pairs of every cell cover, "
              "English left out (it is the fine-tuning language). Languages the cell did not see: evaluated "
              "languages none of its pairs cover."),
        ("p", "A gain pairs the WEAM cell with the MLM (or TLM) cell that agrees with it on every other axis, per "
              f"train seed, and shows the mean over train seeds ± the sample standard deviation over them with "
              f"{MIN_SEEDS_FOR_STD} or more seeds; with fewer, ± the standard deviation of a paired bootstrap over "
              f"the evaluation examples ({RESAMPLES:,} resamples of each language's examples, the same for both "
              "cells, fixed RNG seed). The Spread column says which. \"within noise\": the gain's magnitude does not "
              "exceed twice its spread. \"missing\": no pair has results for every language of the group (never "
              "0); \"—\": the group has no language."),
    ]


def _task_line(results: Results, task: str) -> str:
    splits = sorted({split for (t, *_), split in results.splits.items() if t == task})
    seen = results.languages(task, "seen", next(iter(results.cells.values())))
    return (f"{task}: {headline_metric(task)} on the {' and '.join(splits)} split{'s' if len(splits) > 1 else ''}; "
            f"languages every cell saw: {', '.join(seen) or 'none'}; all evaluated: "
            f"{', '.join(results.evaluated(task))}.")
