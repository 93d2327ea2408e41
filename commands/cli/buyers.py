"""`aftersales buyer ...`: a buyer's standing with the platform (an abuse flag, the disputes
ruled against them), which decides whether their returns are refunded at once as the goods go
back (an instant refund, 极速退款), each change recorded on the buyer.

Each command is derived from its typed command in ``engine/application/requests.py``."""

from __future__ import annotations

import click

from aftersales.commands.cli.actions import ActionGroup
from aftersales.engine.application.requests import COMMANDS


@click.group("buyer", cls=ActionGroup, kinds=COMMANDS)
def buyer_group() -> None:
    """A buyer's standing: abuse flags and disputes lost (instant refunds)."""
