"""``results.json`` of a run: per task the mean and standard deviation over fine-tuning seeds (per language,
and of ``avg_metric``), the transfer gap (English minus the mean of the other languages); over tasks, the
plain mean of the tasks that were scored (``mean_of_scored_tasks``: not an official number), and the official
scorer's aggregates (a category when all its tasks were scored, ``all_task`` when every task of a version
was), each with the caveats that keep it from being comparable with published numbers (a subset of the
languages, the dev split scored).
"""
from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

from weam_ds.xtreme_r.eval_dir import EvalDir
from weam_ds.xtreme_r.score import official_aggregates
from weam_ds.xtreme_r.tasks import CATEGORIES, LANGUAGES, TASKS, besides_english

log = logging.getLogger(__name__)


def _task(name: str, runs: list[dict], seeds: list[int]) -> dict:
    task = TASKS[name]
    main = task.main_metric
    head = {"split": runs[0]["split"], "seeds": seeds, "metric": main, "avg_metric_is": task.avg_metric_is}
    blank = next((r for r in runs if r["scores"] is None), None)
    if blank is not None:
        reason = blank.get("reason") or "not scored"
        log.warning("%s: not scored (%s); left out of the means over tasks", name, reason)
        return {**head, "scored": False, "reason": reason}
    langs = list(runs[0]["scores"][main])
    per_lang = {lang: [r["scores"][main][lang] for r in runs] for lang in langs}
    avg = [r["scores"]["avg_metric"] for r in runs]
    others = besides_english(langs)
    gaps = [r["scores"][main]["en"] - statistics.fmean(r["scores"][main][lang] for lang in others)
            for r in runs] if "en" in langs and others else []
    return {**head, "scored": True,
            "mean": {lang: statistics.fmean(v) for lang, v in per_lang.items()},
            "std": {lang: statistics.pstdev(v) for lang, v in per_lang.items()},
            "avg_metric": statistics.fmean(avg), "avg_metric_std": statistics.pstdev(avg),
            **({"transfer_gap": statistics.fmean(gaps)} if gaps else {})}


OURS_NOT_OFFICIAL = {"lareqa": "all_task: ours, not the official scorer's: it averages in weam-ds's LAReQA mAP@20, "
                                "which evaluate.py cannot compute (it lists no LAReQA languages nor metric)"}
"""Tasks whose score the official scorer cannot make, and what that does to an aggregate over them."""


def _caveats(version: str, names: list[str], tasks: dict) -> list[str]:
    """Why an aggregate over ``names`` is not comparable with the official one."""
    found = [OURS_NOT_OFFICIAL[name] for name in names if name in OURS_NOT_OFFICIAL]
    for name in names:
        t = tasks[name]
        official = LANGUAGES[version][name] or TASKS[name].languages_to_run()
        if t["split"] != TASKS[name].test_split:
            found.append(f"{name}: the {t['split']} split scored (test labels withheld)")
        if set(t["mean"]) != set(official):
            found.append(f"{name}: scored on {len(t['mean'])} languages, {version} lists {len(official)}")
    return found


def aggregate(out: Path, tasks: list[str], seeds: list[int]) -> dict:
    """Reads every ``<out>/<task>/seed<k>/result.json`` of the run."""
    folder = EvalDir(out)
    results = {name: _task(name, [json.loads(folder.result(name, s).read_text(encoding="utf-8")) for s in seeds],
                           seeds) for name in tasks}
    scored = {name: t for name, t in results.items() if t["scored"]}
    head: dict = {}
    if scored:
        head["mean_of_scored_tasks"] = statistics.fmean(t["avg_metric"] for t in scored.values())
    official = {}
    for version in CATEGORIES:
        mine = {name: t["avg_metric"] for name, t in scored.items() if name in LANGUAGES[version]}
        found = official_aggregates(version, mine)
        if found:
            members = {m for key in found for m in (CATEGORIES[version].get(key) or LANGUAGES[version])}
            caveats = _caveats(version, sorted(members), scored)
            official[version] = {**found, **({"caveats": caveats} if caveats else {})}
    if official:
        head["official_aggregates"] = official
    return {**head, **results}
