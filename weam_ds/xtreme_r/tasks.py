"""The benchmark's tasks, languages, categories and file suffixes, per version, as the official scorer
lists them (see ../shared/xtreme_r_spec.md)."""
from __future__ import annotations

_PANX = ("ar he vi id jv ms tl eu ml ta te af nl en de el bn hi mr ur fa fr it pt es bg ru ja ka ko th sw yo my zh kk "
         "tr et fi hu qu pl uk az lt pa gu ro").split()
_UDPOS = ("af ar bg de el en es et eu fa fi fr he hi hu id it ja kk ko mr nl pt ru ta te th tl tr ur vi yo zh lt pl uk "
          "wo ro").split()
_TATOEBA = ("ar he vi id jv tl eu ml ta te af nl de el bn hi mr ur fa fr it pt es bg ru ja ka ko th sw zh kk tr et fi "
            "hu az lt pl uk ro").split()
_XNLI = "ar bg de el en es fr hi ru sw th tr ur vi zh".split()
_XQUAD = "en es de el ru tr ar vi th zh hi ro".split()
_MLQA = "en es de ar hi vi zh".split()
_TYDIQA = "en ar bn fi id ko ru sw te".split()

# Per version: task → its languages (in the scorer's order); the order of tasks is the output order.
LANGUAGES: dict[str, dict[str, list[str]]] = {
    "xtreme": {
        "pawsx": "de en es fr ja ko zh".split(),
        "xnli": _XNLI,
        "panx": _PANX[:_PANX.index("hu") + 1],
        "udpos": _UDPOS[:_UDPOS.index("zh") + 1],
        "bucc2018": "de fr ru zh".split(),
        "tatoeba": _TATOEBA[:_TATOEBA.index("hu") + 1],
        "xquad": _XQUAD[:-1],
        "mlqa": _MLQA,
        "tydiqa": _TYDIQA,
    },
    "xtreme-r": {
        "xnli": _XNLI,
        "xcopa": "et ht id it qu sw ta th tr vi zh".split(),
        "udpos": _UDPOS,
        "panx": _PANX,
        "xquad": _XQUAD,
        "mlqa": _MLQA,
        "tydiqa": _TYDIQA,
        "tatoeba": _TATOEBA,
        "mewslix": "ar de en es fa ja pl ro ta tr uk".split(),
        "lareqa": [],  # the official scorer lists no languages for it
    },
}

CATEGORIES: dict[str, dict[str, list[str]]] = {
    "xtreme": {"classification": ["pawsx", "xnli"], "tagging": ["udpos", "panx"], "qa": ["xquad", "mlqa", "tydiqa"],
               "retrieval": ["bucc2018", "tatoeba"]},
    "xtreme-r": {"classification": ["xnli", "xcopa"], "tagging": ["udpos", "panx"], "qa": ["xquad", "mlqa", "tydiqa"],
                 "retrieval": ["tatoeba", "mewslix"], "multi_choice": ["xcopa"]},
}

QA_TASKS = ("xquad", "mlqa", "tydiqa")

# XQuAD-R's languages (google-research-datasets/lareqa): what weam-ds scores LAReQA on, per question language,
# against the pool of all of them. Kept apart from LANGUAGES, which is the official scorer's view.
LAREQA_LANGUAGES = "ar de el en es hi ru th tr vi zh".split()


def suffix(task: str) -> str:
    if task in QA_TASKS or task in ("mewslix", "lareqa"):
        return "json"
    return "jsonl" if task == "xcopa" else "tsv"
