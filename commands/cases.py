"""`aftersales case ...`: every action of the transition table, and reading cases."""

from __future__ import annotations

from typing import Any

import click

from commands.options import action_options, common, json_option
from commands.output import emit, render_case, render_cases
from engine.values import CaseType, Claim, Condition, Status


def _choice(kind: type[Any]) -> click.Choice[str]:
    return click.Choice([m.value for m in kind])


@click.group("case")
def case_group() -> None:
    """Return, refund, exchange and reship cases."""


@case_group.command("open")
@click.argument("order_id")
@click.option("--type", "case_type", required=True, type=_choice(CaseType))
@click.option("--reason", required=True, help="group.detail, e.g. quality.colour_difference")
@click.option("--amount", default=None, help="Money asked for, e.g. 29.90.")
@click.option("--line", "lines", multiple=True, help="SKU[:QTY] the case concerns (default: all)")
@click.option("--evidence", multiple=True, help="A reference to a photo, chat log, ...")
@click.option("--note", default=None)
@click.option(
    "--case-id",
    default=None,
    help="A UUID for the new case (default: from --command-id, else new).",
)
@action_options
@click.pass_context
def open_case(
    ctx: click.Context,
    /,
    order_id: str,
    case_type: str,
    reason: str,
    amount: str | None,
    lines: tuple[str, ...],
    evidence: tuple[str, ...],
    note: str | None,
    case_id: str | None,
    **kwargs: Any,
) -> None:
    """The buyer asks for a refund, a return, an exchange or a reship."""
    as_json, opts = common(kwargs)
    emit(
        ctx,
        as_json,
        lambda e: e.open_case(
            order_id,
            case_type=case_type,
            reason=reason,
            amount=amount,
            lines=list(lines),
            evidence=list(evidence),
            note=note,
            case_id=case_id,
            **opts,
        ),
        render_case,
    )


@case_group.command("approve")
@click.argument("case_id")
@click.option("--return-address", default=None)
@action_options
@click.pass_context
def approve(ctx: click.Context, /, case_id: str, return_address: str | None, **kwargs: Any) -> None:
    """The merchant approves: refund only refunds at once; returns wait for the goods."""
    as_json, opts = common(kwargs)
    emit(
        ctx,
        as_json,
        lambda e: e.approve(case_id, return_address=return_address, **opts),
        render_case,
    )


@case_group.command("reject")
@click.argument("case_id")
@click.option("--reason", required=True)
@click.option("--communication", required=True, help="Reference to the talk with the buyer.")
@action_options
@click.pass_context
def reject(
    ctx: click.Context, /, case_id: str, reason: str, communication: str, **kwargs: Any
) -> None:
    """The merchant rejects, after talking to the buyer."""
    as_json, opts = common(kwargs)
    emit(
        ctx,
        as_json,
        lambda e: e.reject(case_id, reason=reason, communication=communication, **opts),
        render_case,
    )


@case_group.command("ship-back")
@click.argument("case_id")
@click.option("--carrier", required=True)
@click.option("--waybill", required=True)
@action_options
@click.pass_context
def ship_back(
    ctx: click.Context, /, case_id: str, carrier: str, waybill: str, **kwargs: Any
) -> None:
    """The buyer ships the goods back and enters the waybill."""
    as_json, opts = common(kwargs)
    emit(
        ctx,
        as_json,
        lambda e: e.ship_back(case_id, carrier=carrier, waybill=waybill, **opts),
        render_case,
    )


@case_group.command("receive")
@click.argument("case_id")
@click.option("--condition", type=_choice(Condition), default="ok", show_default=True)
@action_options
@click.pass_context
def receive(ctx: click.Context, /, case_id: str, condition: str, **kwargs: Any) -> None:
    """The merchant confirms receipt of the returned goods."""
    as_json, opts = common(kwargs)
    emit(ctx, as_json, lambda e: e.receive(case_id, condition=condition, **opts), render_case)


@case_group.command("refund")
@click.argument("case_id")
@click.option("--amount", default=None, help="At most the amount asked (default: all of it).")
@action_options
@click.pass_context
def refund(ctx: click.Context, /, case_id: str, amount: str | None, **kwargs: Any) -> None:
    """The merchant refunds the buyer."""
    as_json, opts = common(kwargs)
    emit(ctx, as_json, lambda e: e.refund(case_id, amount=amount, **opts), render_case)


@case_group.command("ship-replacement")
@click.argument("case_id")
@click.option("--carrier", required=True)
@click.option("--waybill", required=True)
@action_options
@click.pass_context
def ship_replacement(
    ctx: click.Context, /, case_id: str, carrier: str, waybill: str, **kwargs: Any
) -> None:
    """The merchant ships the exchange's replacement."""
    as_json, opts = common(kwargs)
    emit(
        ctx,
        as_json,
        lambda e: e.ship_replacement(case_id, carrier=carrier, waybill=waybill, **opts),
        render_case,
    )


@case_group.command("reship")
@click.argument("case_id")
@click.option("--carrier", default=None)
@click.option("--waybill", default=None)
@click.option("--cannot", is_flag=True, help="The merchant cannot reship: the platform pays.")
@click.option("--note", default=None)
@action_options
@click.pass_context
def reship(
    ctx: click.Context,
    /,
    case_id: str,
    carrier: str | None,
    waybill: str | None,
    cannot: bool,
    note: str | None,
    **kwargs: Any,
) -> None:
    """The merchant reships missing items (or says it cannot)."""
    as_json, opts = common(kwargs)
    emit(
        ctx,
        as_json,
        lambda e: e.reship(
            case_id, carrier=carrier, waybill=waybill, cannot=cannot, note=note, **opts
        ),
        render_case,
    )


@case_group.command("withdraw")
@click.argument("case_id")
@action_options
@click.pass_context
def withdraw(ctx: click.Context, /, case_id: str, **kwargs: Any) -> None:
    """The buyer withdraws the case (until the money has moved)."""
    as_json, opts = common(kwargs)
    emit(ctx, as_json, lambda e: e.withdraw(case_id, **opts), render_case)


@case_group.command("escalate")
@click.argument("case_id")
@click.option(
    "--claim",
    required=True,
    type=click.Choice([c.value for c in Claim if c is not Claim.DISPUTED_RECEIPT]),
)
@click.option("--evidence", multiple=True)
@click.option("--note", default=None)
@action_options
@click.pass_context
def escalate(
    ctx: click.Context,
    /,
    case_id: str,
    claim: str,
    evidence: tuple[str, ...],
    note: str | None,
    **kwargs: Any,
) -> None:
    """The buyer asks the platform to intervene."""
    as_json, opts = common(kwargs)
    emit(
        ctx,
        as_json,
        lambda e: e.escalate(case_id, claim=claim, evidence=list(evidence), note=note, **opts),
        render_case,
    )


@case_group.command("rule")
@click.argument("case_id")
@click.option("--for", "in_favour_of", required=True, type=click.Choice(["buyer", "merchant"]))
@click.option("--note", default=None)
@action_options
@click.pass_context
def rule(
    ctx: click.Context, /, case_id: str, in_favour_of: str, note: str | None, **kwargs: Any
) -> None:
    """The platform rules on an escalated case."""
    as_json, opts = common(kwargs)
    emit(
        ctx,
        as_json,
        lambda e: e.rule(case_id, in_favour_of=in_favour_of, note=note, **opts),
        render_case,
    )


@case_group.command("rate")
@click.argument("case_id")
@click.option("--score", required=True, type=click.IntRange(1, 5))
@click.option("--comment", default=None)
@action_options
@click.pass_context
def rate(
    ctx: click.Context, /, case_id: str, score: int, comment: str | None, **kwargs: Any
) -> None:
    """The buyer rates the service once the case has ended (once)."""
    as_json, opts = common(kwargs)
    emit(ctx, as_json, lambda e: e.rate(case_id, score=score, comment=comment, **opts), render_case)


@case_group.command("recover-goods")
@click.argument("case_id")
@click.option("--note", default=None)
@action_options
@click.pass_context
def recover_goods(ctx: click.Context, /, case_id: str, note: str | None, **kwargs: Any) -> None:
    """The merchant got its goods back after the platform refunded an unjustified rejection."""
    as_json, opts = common(kwargs)
    emit(ctx, as_json, lambda e: e.recover_goods(case_id, note=note, **opts), render_case)


@case_group.command("show")
@click.argument("case_id")
@json_option
@click.pass_context
def show(ctx: click.Context, /, case_id: str, as_json: bool) -> None:
    """A case as it stands: status, money, the running deadline, what is allowed now."""
    emit(ctx, as_json, lambda e: e.get_case(case_id), render_case)


@case_group.command("list")
@click.option("--merchant", default=None)
@click.option("--buyer", default=None)
@click.option("--order", "order_id", default=None)
@click.option("--status", type=_choice(Status), default=None)
@click.option("--due-before", default=None, help="Only cases with a deadline due by then.")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@json_option
@click.pass_context
def list_cases(
    ctx: click.Context,
    /,
    merchant: str | None,
    buyer: str | None,
    order_id: str | None,
    status: str | None,
    due_before: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Cases, filtered by merchant, buyer, order, status or deadline."""
    emit(
        ctx,
        as_json,
        lambda e: e.list_cases(
            merchant=merchant,
            buyer=buyer,
            order_id=order_id,
            status=status,
            due_before=due_before,
            limit=limit,
        ),
        render_cases,
    )
