"""`aftersales case ...`: every action of the transition table, and reading cases.

Each command is derived from its typed command in ``engine/application/requests.py``."""

from __future__ import annotations

import click

from aftersales.commands.cli.actions import ActionGroup
from aftersales.engine.application.requests import COMMANDS


@click.group("case", cls=ActionGroup, kinds=COMMANDS)
def case_group() -> None:
    """Return, refund, exchange and reship cases."""
