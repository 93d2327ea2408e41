"""The project installs as one package, `aftersales`, and stores events under stable topics."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

from eventsourcing.utils import get_topic, resolve_topic

from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.case_events import CaseOpened
from aftersales.engine.domain.order_events import OrderPlaced


def test_one_package_at_the_top_of_site_packages() -> None:
    dist = distribution("aftersales")
    assert (dist.read_text("top_level.txt") or "").split() == ["aftersales"]
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {"aftersales": "aftersales.commands.cli.main:main"}


def test_nothing_generic_is_importable_outside_the_repository(tmp_path: Path) -> None:
    probe = (
        "import importlib.util as u\n"
        "print([n for n in ('engine', 'projections', 'commands') if u.find_spec(n)])\n"
        "import aftersales.commands.cli.main, aftersales.engine.application.handler, "
        "aftersales.projections.runner\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_stored_topics_do_not_name_the_installed_package() -> None:
    assert get_topic(CaseOpened) == "engine.case:CaseOpened"
    assert get_topic(ReturnCase) == "engine.case:ReturnCase"
    assert get_topic(OrderPlaced) == "engine.order:OrderPlaced"
    assert resolve_topic("engine.order:OrderPlaced") is OrderPlaced
