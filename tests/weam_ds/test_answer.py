"""The report's Answer, on registries filled here through weam_ds.registry's own API, with per-example outcomes
built so that each gain is a number chosen below and each verdict follows from how the gains were chosen:
WEAM's gain over MLM that grows with the number of languages, one that shrinks, one that stays (on other
examples), one that grows with three train seeds (the seed spread's interval), and one whose two train seeds
disagree (only a bootstrap that redraws seeds as well as examples cannot tell)."""
from __future__ import annotations

import math
import re
import statistics

import numpy as np
import pytest

from weam_ds.registry import Registry
from weam_ds.report import main
from weam_ds.report.answer import answer
from weam_ds.report.results import Results
from weam_ds.report.stats import gains

N = 400
"""Evaluation examples per language."""
BASELINE_RIGHT = {"en": 240, "de": 200}
"""MLM answers the first 240 (60.00) English and 200 (50.00) German examples right: its transfer gap is 10."""
SUBSETS = {"langs_1": ["de-en"], "langs_3": ["de-en", "fr-en", "ru-en"]}
CASES = {  # size: (parameters, WEAM's gain over MLM per subset and train seed, in points; the verdict it makes)
    "tiny": (1_000_000, {"langs_1": [2.0], "langs_3": [20.0]}, "grows"),
    "mini": (2_000_000, {"langs_1": [20.0], "langs_3": [2.0]}, "shrinks"),
    "small": (4_000_000, {"langs_1": [2.0], "langs_3": [2.0]}, "cannot tell"),  # on other examples: see SHIFT
    "base": (8_000_000, {"langs_1": [1.0, 2.0, 3.0], "langs_3": [9.0, 10.0, 11.0]}, "grows"),  # the seed spread
    "large": (16_000_000, {"langs_1": [2.0, 2.0], "langs_3": [-6.0, 14.0]}, "cannot tell"),  # seeds disagree
}
SHIFT = {("small", "langs_3"): 8}
"""WEAM's right answers moved 8 examples later: wrong on 8 that MLM gets right, right on 8 more after them. The
gain is the same, the examples differ, so the change (0) has an interval on both sides of 0."""
TLM = {"tiny": {"langs_1": -16.0, "langs_3": 16.0}}
"""TLM's score against MLM's: WEAM − TLM is 18 with one language and 4 with three, shrinking while WEAM − MLM
grows."""


def _outcomes(points: float, language: str, shift: int = 0) -> np.ndarray:
    """Per-example accuracy (0 or 100) of a cell ``points`` above MLM: right on MLM's examples and
    ``points``·N/100 more after them, all moved ``shift`` examples later."""
    outcomes = np.zeros(N)
    outcomes[shift:BASELINE_RIGHT[language] + round(points * N / 100) + shift] = 100.0
    return outcomes


def _put(reg: Registry, model: str, subset: str, objective: str, seed: int, points: float, shift: int) -> None:
    axes = {"model": model, "languages": subset, "objective": objective, "seed": seed}
    parameters = CASES[model][0]
    cell = reg.put_cell(axes, axes, parameters=parameters, pairs=SUBSETS[subset])
    reg.set_state(cell, "running")
    reg.put_cost(cell, steps=100, tokens=409_600, train_flops=parameters * 1e9, wall_seconds=60.0, gpu_hours=0.0,
                 world_size=1, hardware="cpu")
    for language in BASELINE_RIGHT:
        outcomes = _outcomes(points, language, shift)
        reg.put_scores(cell, "xnli", language, 1, "dev", {"accuracy": float(outcomes.mean())},
                       per_example={"accuracy": outcomes})
    reg.set_state(cell, "evaluated")


@pytest.fixture(scope="module")
def paragraphs(tmp_path_factory) -> list[str]:
    """The Answer's paragraphs on a registry of every case."""
    path = tmp_path_factory.mktemp("study") / "registry.sqlite"
    with Registry(path) as reg:
        for model, (_, by_subset, _) in CASES.items():
            for subset, seed_gains in by_subset.items():
                for seed, gain in enumerate(seed_gains, 1):
                    _put(reg, model, subset, "mlm", seed, 0.0, 0)
                    _put(reg, model, subset, "weam", seed, gain, SHIFT.get((model, subset), 0))
                    if model in TLM:
                        _put(reg, model, subset, "tlm", seed, TLM[model][subset], 0)
        return _paragraphs(reg)


def _paragraphs(reg: Registry) -> list[str]:
    results = Results.read(reg)
    return [text for kind, text in answer(results, gains(results)) if kind == "p"]


def _paragraph(paragraphs: list[str], model: str) -> str:
    return next(p for p in paragraphs if p.startswith(f"{model} ("))


def _trend(paragraph: str, baseline: str) -> tuple[str, float, float, float, str]:
    """(gains with each language count, change, interval low, interval high, verdict) of one baseline."""
    number = r"([+-]\d+\.\d\d)"
    found = re.search(rf"WEAM's gain over {baseline} is ([^;]*); from 1 to 3 languages it changes by {number} "
                      rf"\(interval {number} to {number}\): (grows|shrinks|cannot tell)\.", paragraph)
    assert found, paragraph
    return found[1], float(found[2]), float(found[3]), float(found[4]), found[5]


@pytest.mark.parametrize("model", CASES)
def test_the_verdict_follows_from_how_the_gains_were_built(paragraphs, model):
    _, by_subset, verdict = CASES[model]
    first, last = (statistics.fmean(by_subset[s]) for s in ("langs_1", "langs_3"))
    values, change, low, high, said = _trend(_paragraph(paragraphs, model), "MLM")
    assert values == f"{first:+.2f} with 1 language and {last:+.2f} with 3 languages"
    assert change == pytest.approx(last - first, abs=0.005)
    assert low <= change <= high and said == verdict
    if min(len(seeds) for seeds in by_subset.values()) >= 3:  # both ends' seed spread: ± 2 standard errors
        half = 2 * math.sqrt(sum(statistics.variance(s) / len(s) for s in by_subset.values()))
        assert (low, high) == pytest.approx((change - half, change + half), abs=0.006)
    if model == "large":  # a quarter of the resamples draw the -6 seed twice: a change of -8, so below -4
        assert low < -4 < 0 < high


def test_each_baseline_has_its_own_verdict(paragraphs):
    tiny = _paragraph(paragraphs, "tiny")
    gains_tlm = {subset: CASES["tiny"][1][subset][0] - TLM["tiny"][subset] for subset in SUBSETS}
    values, change, _, _, verdict = _trend(tiny, "TLM")
    assert values == f"{gains_tlm['langs_1']:+.2f} with 1 language and {gains_tlm['langs_3']:+.2f} with 3 languages"
    assert change == pytest.approx(gains_tlm["langs_3"] - gains_tlm["langs_1"]) and verdict == "shrinks"
    assert _trend(tiny, "MLM")[-1] == "grows"


def test_score_and_transfer_gap_per_size_at_its_largest_subset(paragraphs):
    mlm = statistics.fmean(100 * right / N for right in BASELINE_RIGHT.values())
    gap = 100 * (BASELINE_RIGHT["en"] - BASELINE_RIGHT["de"]) / N  # every cell gains as much on both languages
    for model, (_, by_subset, _) in CASES.items():
        weam = mlm + statistics.fmean(by_subset["langs_3"])
        assert (f"With 3 languages (langs_3), the mean score over tasks is WEAM {weam:.2f} (transfer gap "
                f"{gap:.2f}), MLM {mlm:.2f} (transfer gap {gap:.2f})") in _paragraph(paragraphs, model)


PARETO = {  # (size, objective): (score on every language, training FLOPs)
    ("tiny", "mlm"): (60.0, 1e15),
    ("tiny", "weam"): (70.0, 2e15),
    ("mini", "mlm"): (65.0, 3e15),  # dominated: tiny WEAM scores more for fewer FLOPs
    ("mini", "weam"): (70.0, 4e15),  # dominated: tiny WEAM scores as much for fewer FLOPs
}


@pytest.fixture(scope="module")
def pareto_study(tmp_path_factory):
    """A study of the PARETO cells, evaluated on Tatoeba only (it retrieves into English: it scores no English)."""
    study = tmp_path_factory.mktemp("pareto")
    with Registry(study / "registry.sqlite") as reg:
        for (model, objective), (score, flops) in PARETO.items():
            axes = {"model": model, "languages": "langs_1", "objective": objective, "seed": 1}
            cell = reg.put_cell(axes, axes, parameters=CASES[model][0], pairs=SUBSETS["langs_1"])
            reg.put_cost(cell, steps=100, tokens=409_600, train_flops=flops, wall_seconds=60.0, gpu_hours=0.0,
                         world_size=1, hardware="cpu")
            for language in ("de", "fr"):
                reg.put_scores(cell, "tatoeba", language, 1, "test", {"accuracy": score})
    return study


def test_pareto_front_and_no_english_means_not_measured(pareto_study):
    with Registry(pareto_study / "registry.sqlite", readonly=True) as reg:
        paragraphs = _paragraphs(reg)
    for model in ("tiny", "mini"):
        paragraph = _paragraph(paragraphs, model)
        assert "the transfer gap is not measured (no task scores English)" in paragraph
        assert "only language count at this size: cannot tell" in paragraph
    front = paragraphs[-1]
    assert front.startswith("On the Pareto front of score against training FLOPs")
    on_front = re.findall(r"model=(\w+),languages=langs_1,objective=(\w+),seed=1 \(score (\d+\.\d\d) at ([\d.e+]+) "
                          r"FLOPs\)", front)
    assert on_front == [("tiny", "mlm", "60.00", "1e+15"), ("tiny", "weam", "70.00", "2e+15")]


def test_the_answer_opens_both_documents_and_the_command_prints_it(pareto_study, capsys):
    out = pareto_study / "report"
    assert main(["--study", str(pareto_study), "--out", str(out)]) == 0
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert re.findall(r"^## .*", markdown, flags=re.M)[:2] == ["## Answer", "## Summary"]
    assert markdown.index("## Answer") < min(markdown.index("\n| "), markdown.index("\n!["))
    assert re.findall(r"<h2>(.*?)</h2>", page)[:2] == ["Answer", "Summary"]
    assert page.index("<h2>Answer</h2>") < min(page.index("<table"), page.index("<figure"))
    answered = markdown.split("## Answer\n")[1].split("\n## ")[0].strip()
    with Registry(pareto_study / "registry.sqlite", readonly=True) as reg:
        assert answered.split("\n\n") == _paragraphs(reg)
    assert answered.startswith("Method: ")
    assert capsys.readouterr().out.startswith("Answer:\n" + answered.replace("\n\n", "\n") + "\nSummary:\n")
