"""`aftersales shop ...`: a merchant's own settings (return addresses, the rules that approve
requests for the shop), each change recorded on the shop.

Each command is derived from its typed command in ``engine/application/requests.py``."""

from __future__ import annotations

import click

from aftersales.commands.cli.actions import ActionGroup
from aftersales.engine.application.requests import COMMANDS


@click.group("shop", cls=ActionGroup, kinds=COMMANDS)
def shop_group() -> None:
    """A shop's settings: return addresses and the rules that approve requests for it."""
