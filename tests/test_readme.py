"""The README's examples run as written, in order, on a fresh store, after its first screen.

Every fenced ``sh`` block after the first screen is one step of one shell session (the
examples build on each other: a case opened early is audited later), and every fenced
``python`` block that is a whole program (it begins with its imports; the others show a piece
of the source) runs where the session stands. The session runs in an empty folder that has
the repository's ``scripts`` and the virtual environment at ``.venv``, as a clone does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def examples() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    after_first_screen = text[text.index("\n---\n") :]
    return [
        (lang, body)
        for lang, body in FENCE.findall(after_first_screen)
        if lang == "sh" or (lang == "python" and body.startswith(("from ", "import ")))
    ]


def test_the_readme_has_runnable_examples_in_every_part() -> None:
    found = examples()
    shell = "\n".join(body for lang, body in found if lang == "sh")
    assert ". .venv/bin/activate" in shell
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
    assert any(lang == "python" for lang, _ in found)


def test_the_readme_examples_run_as_written(tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(sys.prefix)
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    steps = ["set -euo pipefail"]
    for n, (lang, body) in enumerate(examples()):
        if lang == "sh":
            steps.append(f"echo '>>> example {n}' >&2\n{body}")
        else:
            script = tmp_path / f"example_{n}.py"
            script.write_text(body, encoding="utf-8")
            steps.append(f"echo '>>> example {n}' >&2\npython {script.name}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERSALES_")}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        ["bash", "-c", "\n".join(steps)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = result.stderr[-3000:]
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{tail}"
    assert "Traceback" not in result.stdout + result.stderr
    # The session really did what the README says.
    assert "refunded" in result.stdout and "dispute bundle written" in result.stdout
    assert (tmp_path / "try.db").exists() and not (tmp_path / "aftersales.db").exists()
