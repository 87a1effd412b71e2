"""The documentation stays true to the tree: README.md is a short entrance that opens with `make demo` and `make
test`, every relative link (and anchor) of README.md and docs/*.md leads somewhere, and every `python -m` command a
fenced block shows names a module that runs and flags its --help lists."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from documentation import PAGES, ROOT

FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"--(\[no-\])?([a-z][a-z0-9_-]*)")

# One process runs every command's --help (the imports are paid once), descending into subcommands while the next
# word is one of the choices argparse's usage line offers ({run,plan,study} ...).
HELP = r"""
import contextlib, functools, io, json, re, runpy, sys
@functools.cache
def help_text(words):
    sys.argv = [words[0], *words[1:], "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        runpy.run_module(words[0], run_name="__main__", alter_sys=True)
    return out.getvalue()
answers = {}
for command in json.loads(sys.argv[1]):
    words = command.split()
    n = 1
    try:
        text = help_text(tuple(words[:1]))
        while n < len(words) and words[n] in {c for group in re.findall(r"\{([\w,-]+)\}", text.split("\n\n")[0])
                                              for c in group.split(",")}:
            n += 1
            text = help_text(tuple(words[:n]))
    except ImportError as error:
        text = f"ImportError: {error}"
    answers[command] = [" ".join(words[:n]), text]
print(json.dumps(answers))
"""


def prose(page: Path) -> str:
    """The page without its fenced blocks: links and headings live outside them."""
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces as hyphens, and -1, -2
    ... after a repeated one."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", prose(page), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return out


def shown_commands() -> list[str]:
    """Every `python -m ...` command of a fenced block, with its continuation lines (a trailing backslash, or an
    indented line of [options]), its comment and any `$ ` prompt left off."""
    commands = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text(encoding="utf-8")):
            lines = block.splitlines()
            for i, line in enumerate(lines):
                if "python -m " not in line:
                    continue
                command = line[line.index("python -m "):]
                while command.endswith("\\") or (i + 1 < len(lines) and re.match(r"\s+[\[-]", lines[i + 1])):
                    i += 1
                    command = command.rstrip("\\") + " " + lines[i].strip()
                commands.append(re.sub(r"\s+#.*", "", command).split(None, 2)[-1])
    return commands


def test_the_readme_is_an_entrance_that_opens_with_the_demo_and_the_tests():
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(readme) <= 300, f"README.md has {len(readme)} lines; the reference belongs in docs/"
    body = [line for line in readme[1:] if line.strip()]
    first_block = body[1:body.index("```", 1)] if body[0] == "```" else []
    commands = [line.split("#")[0].strip() for line in first_block if not line[0].isspace()]
    assert commands[:2] == ["make demo", "make test"], body[:4]


def test_every_relative_link_leads_to_a_file_and_its_anchor():
    broken = []
    for page in PAGES:
        for target in LINK.findall(prose(page)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such file")
            elif anchor and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such heading in {linked.name}")
    assert not broken, "\n".join(broken)


def test_every_command_shown_names_a_module_and_flags_its_help_lists():
    commands = shown_commands()
    assert len(commands) > 20, commands  # the reference pages show every CLI; an empty list would check nothing
    run = subprocess.run([sys.executable, "-c", HELP, json.dumps(sorted(set(commands)))], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    answers = json.loads(run.stdout.splitlines()[-1])
    wrong = []
    for command in commands:
        program, text = answers[command]
        if "usage:" not in text:
            wrong.append(f"python -m {command}: no --help ({text.strip()[:200]})")
            continue
        known = {flag for _, flag in FLAG.findall(text)}
        shown = {name for no, flag in FLAG.findall(command) for name in ([flag, "no-" + flag] if no else [flag])}
        wrong += [f"python -m {program}: --{flag} is not in its --help" for flag in sorted(shown - known)]
    assert not wrong, "\n".join(wrong)
