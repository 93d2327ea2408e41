"""The examples in the README and in docs/ run as written, each section on a fresh store.

A section is the text under one ``##`` heading of README.md (after its first screen) or of a
file in docs/ (the text before a file's first ``##`` is a section too). Its fenced ``sh`` blocks
are the steps of one shell session, and every fenced ``python`` block that is a whole program (it
begins with its imports; the others show a piece of the source) runs where the session stands.
Sections do not lean on each other: each makes what it needs, so each is a test of its own and
they spread over the test processes. A section runs in an empty folder that has the repository's
``scripts`` and the virtual environment at ``.venv``, as a clone does; the files in docs/ say the
environment is active, so their sessions start with ``. .venv/bin/activate``, while the README's
session activates it itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
HEADING = re.compile(r"^(#{1,6}) (.+)$")
PROCESS = re.compile(r"^(?:\w+=\$\()?(?:aftersales|python) ", re.M)

# What each session must have printed: it really did what its text says.
PRINTS = {
    "README.md: A return, from the order to the refund": ["refunded", "59.00"],
    "walkthrough.md: Disputes and money": ["refunded", "awaiting_reshipment"],
    "walkthrough.md: Negotiation": ["scratch on the lid", "refunded"],
    "walkthrough.md: Scripts: batch, imports, a generated workload": ['"ok": true', "orders: 2 ok"],
    "walkthrough.md: From Python": ["refunded 59.00", "bad_input", "not_allowed"],
    "audit-and-checkpoints.md: Audit": [
        "verified: yes",
        "dispute bundle written",
        "verified: the chain and the checks hold",
    ],
    "audit-and-checkpoints.md: Checkpoints: forging history needs a key the database "
    "does not hold": [
        "checkpoint at position",
        "proven signed",
        "verified: the chain and the checks hold",
    ],
    "reports.md: Projections and reports": [
        "refunded: 278.00",
        "KETTLE",
        '"advanced_by_platform": "129.00"',
    ],
    "operations.md: The clock": ["auto_approve", "auto_close", "2 deadline(s) fired"],
    "operations.md: Reading the store by hand": ["CaseOpened"],
}


@dataclass(frozen=True)
class Section:
    document: Path
    title: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.document.name}: {self.title}"

    def examples(self) -> list[tuple[str, str]]:
        return [
            (lang, body)
            for lang, body in FENCE.findall(self.text)
            if lang == "sh" or (lang == "python" and body.startswith(("from ", "import ")))
        ]

    def processes(self) -> int:
        """About how many processes the section's session starts."""
        return sum(
            len(PROCESS.findall(body)) if lang == "sh" else 1 for lang, body in self.examples()
        )


def _split(document: Path) -> list[Section]:
    """The document's ``##`` sections (headings inside fenced blocks are not headings)."""
    text = document.read_text(encoding="utf-8")
    if document == README:
        text = text[text.index("\n---\n") :]
    sections: list[Section] = []
    lines: list[str] = []
    title, fenced = "(top)", False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        found = None if fenced else HEADING.match(line.rstrip("\n"))
        if found and len(found[1]) == 2:
            sections.append(Section(document, title, "".join(lines)))
            title, lines = found[2], []
        else:
            lines.append(line)
    sections.append(Section(document, title, "".join(lines)))
    return sections


def sections() -> list[Section]:
    """Every section with examples, the longest sessions first (each process they start is most
    of their time), so that the test processes finish together."""
    found = [s for document in DOCUMENTS for s in _split(document) if s.examples()]
    return sorted(found, key=lambda s: -s.processes())


def test_every_command_family_has_a_runnable_example() -> None:
    found = sections()
    shell = "\n".join(body for s in found for lang, body in s.examples() if lang == "sh")
    readme = "\n".join(body for s in found if s.document == README for _, body in s.examples())
    assert ". .venv/bin/activate" in readme
    for command in (
        "case open",
        "case rule",
        "case offer",
        "batch",
        "import-history",
        "audit",
        "project run",
        "report dashboard",
        "ledger",
        "tick",
        "verify_bundle.py",
    ):
        assert command in shell, command
    assert any(lang == "python" for s in found for lang, _ in s.examples())
    names = {s.name for s in found}
    assert set(PRINTS) <= names, set(PRINTS) - names
    assert len(names) == len(found), "two sections of one document share a heading"


@pytest.mark.parametrize("section", sections(), ids=lambda s: s.name)
def test_the_section_runs_as_written(section: Section, tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(sys.prefix)
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    steps = ["set -euo pipefail"]
    if section.document != README:
        steps.append(". .venv/bin/activate")
    for n, (lang, body) in enumerate(section.examples()):
        if lang == "python":
            script = tmp_path / f"example_{n}.py"
            script.write_text(body, encoding="utf-8")
            body = f"python {script.name}"
        steps.append(f"echo '>>> example {n}' >&2\n{body}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERSALES_")}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        ["bash", "-c", "\n".join(steps)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    shown = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    for printed in PRINTS.get(section.name, []):
        assert printed in result.stdout, (printed, shown)
    # Each section names its own store, so none falls back on the default one.
    assert not (tmp_path / "aftersales.db").exists()
    if section.document == README:
        assert (tmp_path / "try.db").exists()


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """The anchor a heading gets when the file is shown on GitHub."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(document: Path) -> set[str]:
    text = FENCE.sub("", document.read_text(encoding="utf-8"))
    return {_anchor(m[2]) for line in text.splitlines() if (m := HEADING.match(line))}


def test_every_link_between_the_documents_leads_somewhere() -> None:
    for document in DOCUMENTS:
        text = FENCE.sub("", document.read_text(encoding="utf-8"))
        for target in LINK.findall(text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            linked = (document.parent / path).resolve() if path else document
            assert linked.exists(), (document.name, target)
            if anchor:
                assert anchor in _anchors(linked), (document.name, target)
