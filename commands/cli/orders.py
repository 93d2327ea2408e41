"""`aftersales order ...`: facts from the order system.

Each command is derived from its typed command in ``engine/application/requests.py``."""

from __future__ import annotations

import click

from aftersales.commands.cli.actions import ActionGroup
from aftersales.engine.application.requests import COMMANDS


@click.group("order", cls=ActionGroup, kinds=COMMANDS)
def order_group() -> None:
    """Orders: placed, shipped and delivered, as the order system reports them."""


# Imported after the group exists: the import command module builds on the action commands.
from aftersales.commands.cli.imports import import_orders  # noqa: E402

order_group.add_command(import_orders)
