"""The one place that maps results to JSON or text, and errors to exit codes.

The engine's errors speak the domain and carry a code (``bad_input``, ``not_allowed``, ...);
the exit code each one gives is decided here, for the command line and `batch` alike."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote

import click
from eventsourcing.persistence import PersistenceError

from aftersales.commands.cli.display import for_people
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.policy_file import load_policy
from aftersales.engine.domain.errors import AftersalesError, StoreUnavailable
from aftersales.engine.domain.policy import Policy
from aftersales.engine.domain.values import parse_zone
from aftersales.engine.storage.urls import DEFAULT_STORE, redacted, store_password

if TYPE_CHECKING:
    from aftersales.engine.storage.replica import ReadStore

Renderer = Callable[[Any], str]


class State:
    """What the group options set up; the engine opens on first use."""

    def __init__(self, store: str | None, policy_path: str | None, tz: str | None = None) -> None:
        self.store = store
        self.policy_path = policy_path
        self.tz = tz
        self._engine: Engine | None = None
        self._policy: Policy | None = None
        # A standby reads go to (--read-store; commands/cli/read_side.py), the token of an
        # action a read waits for (--read-after), and the store and engine opened on it.
        self.read_store: str | None = None
        self.read_after: str | None = None
        self.reader: tuple[ReadStore, Engine] | None = None
        keep_secret(store)

    def read_from(self, url: str) -> None:
        """Reads go to this standby (--read-store), its password never printed."""
        keep_secret(url)
        self.read_store = url

    def policy(self) -> Policy:
        if self._policy is None:
            self._policy = load_policy(self.policy_path)
        return self._policy

    def zone(self) -> tzinfo:
        """The zone people read times in: --tz, else the policy's display zone."""
        return parse_zone(self.tz or self.policy().display_zone)

    def engine(self, *, create: bool = True) -> Engine:
        """The engine on the store; a reader (``create=False``) never creates a store."""
        if self._engine is None:
            try:
                self._engine = Engine(self.store, policy=self.policy(), create=create)
            except PersistenceError as exc:
                raise StoreUnavailable(
                    f"cannot open store {redacted(self.store or DEFAULT_STORE)}: {_one_line(exc)}"
                ) from None
        return self._engine

    def close(self) -> None:
        if self.reader is not None:
            self.reader[1].close()
            self.reader = None
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# The store's password, as written in its URL and decoded: never printed, whatever message
# (ours, the driver's) would carry it.
_SECRETS: set[str] = set()


def keep_secret(store: str | None) -> None:
    password = store_password(store)
    if password:
        _SECRETS.update({password, unquote(password)})


def scrub(message: str) -> str:
    """A message with the store's password replaced by ``***``."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=None, separators=(", ", ": "))


# The contract's exit codes, by error code: 2 bad input, 3 not allowed by the rules (or by a
# stored event that cannot be used), 4 no such case or order, 5 a conflicting change; 1 the store
# cannot be reached.
EXIT_CODES: dict[str, int] = {
    "bad_input": 2,
    "not_allowed": 3,
    "poisoned": 3,
    "invariant_broken": 3,
    "not_found": 4,
    "conflict": 5,
    "store_unavailable": 1,
}


def exit_code(code: str) -> int:
    return EXIT_CODES.get(code, 1)


def fail_with(exc: AftersalesError, as_json: bool) -> NoReturn:
    fail(exc.code, exc.message, exit_code(exc.code), as_json, exc.to_json())


def fail(
    code: str,
    message: str,
    exit_code: int,
    as_json: bool,
    error: dict[str, object] | None = None,
) -> NoReturn:
    message = scrub(message)
    click.echo(f"error: {message}", err=True)
    if as_json:
        click.echo(to_json({"error": {**(error or {}), "code": code, "message": message}}))
    sys.exit(exit_code)


def emit(
    ctx: click.Context,
    /,
    as_json: bool,
    call: Callable[[Engine], Any],
    render: Renderer,
    *,
    creates: bool = True,
) -> None:
    """Run one command against the engine and print its result, or fail with the exit code.
    A read (``creates=False``) refuses a store that is not there rather than create it."""
    state: State = ctx.find_object(State)  # type: ignore[assignment]
    try:
        # A bad --tz is refused before anything is done.
        zone = state.zone()
        from aftersales.commands.cli.read_side import run_on_reads

        result = run_on_reads(state, call, creates)
    except AftersalesError as exc:
        fail_with(exc, as_json)
    except PersistenceError as exc:
        fail("store_unavailable", f"the store failed: {_one_line(exc)}", 1, as_json)
    if as_json:
        click.echo(to_json(result))
    else:
        click.echo(render(for_people(result, zone)))


# Renderers for a person -------------------------------------------------------------------------


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return str(value)


def render_case(case: dict[str, Any]) -> str:
    lines = [
        f"case {case['case_id']}  {case['status']}  (version {case['version']})",
        f"  order {case['order_id']}  merchant {case['merchant_id']}  buyer {case['buyer_id']}",
        f"  {case['type']}  {case['reason']}  asked {case['amount']}  "
        f"refunded {case['refunded_amount']}"
        + (f" by {case['refund_paid_by']}" if case["refund_paid_by"] else ""),
    ]
    if case["due_at"]:
        lines.append(f"  due {case['due_at']}: {case['due_action']} if nobody acts")
    lines += _pending_clock(case)
    for key in (
        "follows",
        "rejection",
        "return_shipment",
        "receipt_condition",
        "replacement_shipment",
        "reshipment",
        "escalation",
        "ruling",
        "rating",
        "ledger",
    ):
        if case.get(key):
            lines.append(f"  {key.replace('_', ' ')}: {_cell(case[key])}")
    lines += _negotiation(case)
    allowed = case.get("allowed_actions") or []
    lines.append(f"  allowed now: {', '.join(allowed) if allowed else 'nothing'}")
    return "\n".join(lines)


def _pending_clock(case: dict[str, Any]) -> list[str]:
    """What the clock had done by the read's time that no tick has recorded yet."""
    lines = []
    for p in case.get("pending_clock") or []:
        if "refused" in p:
            lines.append(
                f"  the clock: {p['action']} due {p['due_at']} is refused: "
                f"{p['refused']['message']}"
            )
        else:
            lines.append(
                f"  the clock: {p['action']} fell due {p['due_at']} ({p['from']} to {p['to']}), "
                "shown taken; the next tick records it"
            )
    return lines


def _negotiation(case: dict[str, Any]) -> list[str]:
    """The talk about a case, one line a message, then the offers and the extension."""
    lines = []
    for m in case.get("messages") or []:
        evidence = f"  evidence: {', '.join(m['evidence'])}" if m["evidence"] else ""
        lines.append(f"  message {m['at']} {m['party']} {m['by']}: {m['text']}{evidence}")
    for offer in case.get("offers") or []:
        lines.append(f"  offer: {_cell(offer)}")
    if case.get("receipt_extension"):
        lines.append(f"  receipt extension: {_cell(case['receipt_extension'])}")
    return lines


def render_cases(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no cases match"
    return table(
        rows,
        [
            "case_id",
            "order_id",
            "merchant_id",
            "type",
            "status",
            "amount",
            "refunded_amount",
            "due_at",
            "due_action",
        ],
    )


def render_order(order: dict[str, Any]) -> str:
    lines = [
        f"order {order['order_id']}  merchant {order['merchant_id']}  buyer {order['buyer_id']}  "
        f"total {order['total']}  (version {order['version']})",
        f"  placed {order['placed_at']}  shipped {order['shipped_at'] or '-'}  "
        f"delivered {order['delivered_at'] or '-'}",
        table(
            order["lines"],
            ["sku", "quantity", "unit_price", "category", "refunded", "open_case_id"],
        ),
    ]
    return "\n".join(lines)


def render_shop(shop: dict[str, Any]) -> str:
    lines = [f"shop {shop['merchant_id']}  (version {shop['version']})"]
    addresses = [{**a, "default": "yes" if a["default"] else ""} for a in shop["return_addresses"]]
    lines.append("return addresses:" if addresses else "return addresses: none")
    if addresses:
        lines.append(table(addresses, ["address_id", "warehouse", "address", "default"]))
    rules = [
        {
            **r,
            "types": ",".join(r["types"]),
            "up_to": r["up_to"] or "-",
            "reasons": ",".join(r["reasons"]) or "-",
            "categories": ",".join(r["categories"]) or "-",
        }
        for r in shop["rules"]
    ]
    lines.append("rules:" if rules else "rules: none (people answer every request)")
    if rules:
        lines.append(
            table(rules, ["rule_id", "version", "types", "up_to", "reasons", "categories"])
        )
    lines += render_staff(shop)
    return "\n".join(lines)


# Staff queues ----------------------------------------------------------------------------------


def render_staff(shop: dict[str, Any]) -> list[str]:
    staff = [
        {
            **m,
            "up_to": m["up_to"] or "-",
            "reasons": ",".join(m["reasons"]) or "-",
            "skus": ",".join(m["skus"]) or "-",
        }
        for m in shop.get("staff", [])
    ]
    if not staff:
        return ["staff: none (cases are assigned to no one)"]
    return [
        f"staff (assigned {shop['assign_mode']}):",
        table(staff, ["member_id", "reasons", "up_to", "skus"]),
    ]


def render_assignment(assignment: dict[str, Any]) -> str:
    if assignment["assignee"] is None:
        return f"case {assignment['case_id']}: assigned to no one"
    lines = [
        f"case {assignment['case_id']}: {assignment['assignee']} ({assignment['how']})  "
        f"(version {assignment['version']})",
        table(assignment["history"], ["at", "member", "how", "previous", "by"]),
    ]
    return "\n".join(lines)


def render_buyer(buyer: dict[str, Any]) -> str:
    flag = buyer["flag"]
    lines = [
        f"buyer {buyer['buyer_id']}  (version {buyer['version']})",
        f"flag: {flag['reason']} (by {flag['by']} at {flag['at']})" if flag else "flag: none",
        f"disputes lost: {len(buyer['disputes_lost'])}",
    ]
    if buyer["disputes_lost"]:
        lines.append(table(buyer["disputes_lost"], ["case_id", "at"]))
    instant = buyer.get("instant_refund")
    if instant is not None:
        lines.append(
            f"instant refund: up to {instant['up_to']}"
            if instant["eligible"]
            else f"instant refund: no ({instant['why_not']})"
        )
    return "\n".join(lines)


def render_tick(result: dict[str, Any]) -> str:
    lines = [f"tick at {result['now']}: {len(result['fired'])} deadline(s) fired"]
    if result["fired"]:
        lines.append(table(result["fired"], ["case_id", "action", "due_at"]))
    if result["skipped"]:
        lines.append(f"{result['skipped']} already dealt with by someone else")
    for failed in result["failed"]:
        lines.append(
            f"failed {failed['case_id']} {failed['action']} due {failed['due_at']}: "
            f"{failed['error']['message']}"
        )
    if result["stopped"]:
        lines.append("stopped before the end; the next tick carries on")
    return "\n".join(lines)


# How the command line shows each kind of result (a command's ``shows``).
RENDERERS: dict[str, Renderer] = {
    "case": render_case,
    "cases": render_cases,
    "order": render_order,
    "shop": render_shop,
    "tick": render_tick,
    "assignment": render_assignment,
    "buyer": render_buyer,
}
