"""The project's documentation as the tests read it: README.md (the entrance) and the reference pages in docs/.
Tests that hold the commands and configs the documentation shows find them here, wherever a page keeps them."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def yaml_blocks() -> list[str]:
    """Every ```yaml block of every page, in page order."""
    return [block for page in PAGES
            for block in re.findall(r"```yaml\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)]
