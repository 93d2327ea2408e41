"""`aftersales order ...`: facts from the order system."""

from __future__ import annotations

from typing import Any

import click

from commands.options import action_options, common, json_option
from commands.output import emit, render_order


@click.group("order")
def order_group() -> None:
    """Orders: placed, shipped and delivered, as the order system reports them."""


@order_group.command("place")
@click.argument("order_id")
@click.option("--merchant", required=True, help="The shop selling the order.")
@click.option("--buyer", required=True, help="The buyer.")
@click.option("--line", "lines", multiple=True, required=True, help="SKU:QTY:UNIT_PRICE[:CATEGORY]")
@action_options
@click.pass_context
def place(
    ctx: click.Context,
    /,
    order_id: str,
    merchant: str,
    buyer: str,
    lines: tuple[str, ...],
    **kwargs: Any,
) -> None:
    """Record a placed order with its lines (unit price as paid)."""
    as_json, opts = common(kwargs)
    emit(
        ctx,
        as_json,
        lambda e: e.place_order(
            order_id, merchant_id=merchant, buyer_id=buyer, lines=list(lines), **opts
        ),
        render_order,
    )


@order_group.command("ship")
@click.argument("order_id")
@click.option("--carrier", default=None)
@click.option("--waybill", default=None)
@action_options
@click.pass_context
def ship(
    ctx: click.Context, /, order_id: str, carrier: str | None, waybill: str | None, **kwargs: Any
) -> None:
    """Record that the merchant shipped the order."""
    as_json, opts = common(kwargs)
    emit(
        ctx,
        as_json,
        lambda e: e.ship_order(order_id, carrier=carrier, waybill=waybill, **opts),
        render_order,
    )


@order_group.command("deliver")
@click.argument("order_id")
@action_options
@click.pass_context
def deliver(ctx: click.Context, /, order_id: str, **kwargs: Any) -> None:
    """Record that the order reached the buyer (starts the no-reason window)."""
    as_json, opts = common(kwargs)
    emit(ctx, as_json, lambda e: e.deliver_order(order_id, **opts), render_order)


@order_group.command("show")
@click.argument("order_id")
@json_option
@click.pass_context
def show(ctx: click.Context, /, order_id: str, as_json: bool) -> None:
    """An order's lines, what was refunded on each, and which case holds it."""
    emit(ctx, as_json, lambda e: e.get_order(order_id), render_order)
