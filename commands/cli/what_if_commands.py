"""`aftersales policy what-if`: a period replayed under another policy, in memory (the replay is
engine/application/what_if.py; this parses, runs and prints)."""

from __future__ import annotations

from typing import Any

import click

from aftersales.commands.cli.display import parse_day_or_time
from aftersales.commands.cli.options import json_option
from aftersales.commands.cli.output import State, emit, table
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.policy_file import load_policy
from aftersales.engine.application.what_if import DEFAULT_LIMIT, what_if
from aftersales.engine.domain.limits import MAX_LIST_LIMIT


@click.group("policy")
def policy_group() -> None:
    """Policies: what a change of the rules would have done (what-if)."""


@policy_group.command("what-if")
@click.option(
    "--policy",
    "policy_file",
    required=True,
    help="The new policy, a TOML file (as the group's --policy takes one); the policy in force "
    "is the group's --policy, else $AFTERSALES_POLICY, else the built-in rules.",
)
@click.option(
    "--since",
    required=True,
    help="Cases opened from here, a time with its offset or a date (that day's start).",
)
@click.option("--until", required=True, help="... up to here, excluded; everything as of then.")
@click.option("--merchant", default=None, help="One shop's cases (default: every shop's).")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIST_LIMIT),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Changed cases listed (all are counted).",
)
@json_option
@click.pass_context
def what_if_cmd(
    ctx: click.Context,
    /,
    policy_file: str,
    since: str,
    until: str,
    merchant: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Replay the recorded actions of the cases opened in a period under another policy, in
    memory, changing nothing: which cases would have ended differently and how, and what it
    does to each shop's money and measures."""

    def call(engine: Engine) -> dict[str, Any]:
        state: State = ctx.find_object(State)  # type: ignore[assignment]
        zone = state.zone()
        start = parse_day_or_time(since, "--since", zone)
        end = parse_day_or_time(until, "--until", zone)
        new = load_policy(policy_file)
        return what_if(
            engine.store,
            current=engine.policy,
            policy=new,
            since=start,
            until=end,
            merchant=merchant,
            limit=limit,
        )

    emit(ctx, as_json, call, render_what_if, creates=False)


CHANGED_COLUMNS = ["case_id", "order_id", "merchant_id", "changes", "was", "would_be", "refused"]
SHOP_COLUMNS = [
    "merchant_id",
    "cases",
    "refunded",
    "auto_approved",
    "timeouts",
    "refund_rate",
    "merchant_bears",
    "platform_bears",
]


def _end(outcome: dict[str, Any]) -> str:
    if outcome["status"] is None:
        return "not opened"
    paid = f" by {outcome['refund_paid_by']}" if outcome["refund_paid_by"] else ""
    return f"{outcome['status']} {outcome['refunded']}{paid}"


def _shop_row(name: str, figures: dict[str, Any]) -> dict[str, Any]:
    was, now, diff = figures["recorded"], figures["what_if"], figures["difference"]

    def cell(key: str) -> str:
        change = diff[key]
        sign = "" if str(change).startswith("-") else "+"
        return f"{was[key]} -> {now[key]} ({sign}{change})"

    return {
        "merchant_id": name,
        "cases": was["cases"],
        "refunded": cell("refunded"),
        "auto_approved": cell("auto_approved"),
        "timeouts": cell("merchant_timeouts"),
        "refund_rate": cell("refund_rate"),
        "merchant_bears": cell("merchant_bears"),
        "platform_bears": cell("platform_bears"),
    }


def render_what_if(result: dict[str, Any]) -> str:
    policy, current = result["policy"], result["current_policy"]
    lines = [
        f"what-if {policy['version']} instead of {current['version']}: cases opened "
        f"{result['since']} to {result['until']}"
        + (f" of {result['merchant']}" if result["merchant"] else ""),
        f"{result['orders']} orders, {result['cases']} cases, {result['events_read']} events "
        f"read; {result['actions_replayed']} actions replayed, {result['actions_refused']} "
        f"refused; {result['changed_count']} case(s) would go differently",
    ]
    if result["changed"]:
        rows = [
            {
                "case_id": c["case_id"],
                "order_id": c["order_id"],
                "merchant_id": c["merchant_id"],
                "changes": c["changes"],
                "was": _end(c["recorded"]),
                "would_be": _end(c["what_if"]),
                "refused": [f"{r['action']} ({r['code']})" for r in c["refused"]] or None,
            }
            for c in result["changed"]
        ]
        lines += ["", table(rows, CHANGED_COLUMNS)]
        if result["listed"] < result["changed_count"]:
            lines.append(f"... {result['changed_count'] - result['listed']} more (--limit)")
    shops = [_shop_row(m["merchant_id"], m) for m in result["merchants"]]
    if shops:
        shops.append(_shop_row("(all)", result["totals"]))
        lines += ["", "recorded -> what-if (difference):", table(shops, SHOP_COLUMNS)]
    for bad in result["unreadable"]:
        lines.append(f"order {bad['order_id']} left out: {bad['error']}")
    return "\n".join(lines)
