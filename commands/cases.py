"""`aftersales case ...`: every action of the transition table, and reading cases.

Each command is derived from its typed command in ``engine/commands.py``."""

from __future__ import annotations

import click

from aftersales.commands.actions import click_command
from aftersales.engine.commands import COMMANDS


@click.group("case")
def case_group() -> None:
    """Return, refund, exchange and reship cases."""


for _kind in COMMANDS:
    if _kind.name.startswith("case "):
        case_group.add_command(click_command(_kind))
