"""The README and docs point only at things a fresh clone has."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def documents():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "resources/models/default/MODEL_CARD.md",
            ROOT / "resources/models/pointer/MODEL_CARD.md"]


def test_every_relative_link_in_the_readme_and_docs_resolves():
    broken = []
    for document in documents():
        for target in LINK.findall(document.read_text()):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = (document.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{document.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_the_readme_is_a_short_guide_that_names_no_outside_files_or_issues():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 200
    install = next(i for i, line in enumerate(lines) if line.startswith("## Install"))
    assert install < 40 and "make demo" in text and "make test" in text
    assert "shared/" not in text and not re.search(r"\bissue\s*\d", text, re.IGNORECASE)
    assert "runs/" not in text  # outputs that a clone does not have
