"""`aftersales order ...`: facts from the order system.

Each command is derived from its typed command in ``engine/application/requests.py``."""

from __future__ import annotations

import click

from aftersales.commands.cli.actions import ActionGroup
from aftersales.engine.application.requests import COMMANDS


@click.group(
    "order",
    cls=ActionGroup,
    kinds=COMMANDS,
    others={"import": "aftersales.commands.cli.imports:import_orders"},
)
def order_group() -> None:
    """Orders: placed, shipped and delivered, as the order system reports them."""
