#!/usr/bin/env python3
"""Verify an aftersales dispute bundle offline, with nothing but Python's standard library.

    python3 verify_bundle.py BUNDLE.json [--json]

A bundle (``aftersales audit CASE --export FILE``) holds the case's events exactly as they were
stored, its order's events, the policy in force and the replayed states. This script checks,
independently of the engine's code:

- the file is byte for byte as exported (so even an added space shows);
- each stored event's JSON is in the form the store writes, and its hash is sha256 over its
  content, id and version chained to the previous event's hash; versions run 1, 2, 3 ... with
  none missing; the bundle's head hash is the last event's;
- each action was allowed from the status the case stood in, and led to a status it can lead to;
- each escalation's claim fits its case, and a missing-items ruling pays no more than the case's
  lines are worth;
- every system action fired the deadline then running, no earlier than it fell due, and no
  person acted at or after the running deadline fell due (the clock acts first); an action
  that leaves the status as it was leaves the deadline too, but for the one extension of the
  receipt window, which moves it later by the hours it records;
- the amount asked matches the order's lines, an offer never exceeds it, refunds never exceed
  it (or the amount of an offer the buyer accepted), no line of the order is
  refunded beyond what was paid, and the order's ledger agrees with the case;
- the replayed states agree with the events.

Exit 0 when the bundle verifies, 3 (with the problems listed) when it does not, 2 when the file
cannot be read at all. Compare the head hash with the one the platform reports for the case
(``aftersales audit CASE``) to know the bundle is the whole history, not a rewritten one.

A hash chain alone does not stop whoever could write to the platform's database: they can
re-seal it. With ``--public-key FILE`` (or ``$AFTERSALES_PUBLIC_KEY``) the script also checks the
bundle's checkpoint, which the platform signed with a key its database does not hold: the
signature over the tree head, and for each event an inclusion proof that it is the event the
checkpoint signed (RFC 6962 / RFC 9162 Merkle proofs). Events newer than the checkpoint are
listed as not covered. This part needs the ``cryptography`` package for Ed25519; everything
else needs nothing but Python.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import sys
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

FORMAT = "aftersales-dispute-bundle/1"
CHECKPOINT_FORMAT = "aftersales-checkpoint/1"
PUBLIC_KEY_ENV = "AFTERSALES_PUBLIC_KEY"
GENESIS_HASH = "0" * 64
CENT = Decimal("0.01")

AWAITING = {
    "awaiting_merchant",
    "awaiting_buyer_shipment",
    "awaiting_merchant_receipt",
    "awaiting_replacement",
    "awaiting_reshipment",
    "awaiting_buyer_answer",
}
FINAL = {"refunded", "completed", "closed"}
ALL_STATUSES = AWAITING | FINAL | {"escalated", "rejected"}
HOLDING = ALL_STATUSES - FINAL - {"rejected"}

# Where an offer may be made, and so where an unanswered one returns the case.
OFFER_FROM = (
    "awaiting_merchant",
    "awaiting_buyer_shipment",
    "awaiting_merchant_receipt",
    "awaiting_replacement",
)
# A copy of the engine's rules, kept here so this file needs nothing but Python. The transition
# tables below are those the engine derives from its one transition table
# (engine/domain/transitions.py); tests/test_audit.py checks every table in this file equal to the
# engine's. The statuses each action may start from:
ALLOWED_FROM: dict[str, set[str]] = {
    "approve": {"awaiting_merchant"},
    "reject": {"awaiting_merchant"},
    "refund": {
        "awaiting_merchant",
        "awaiting_buyer_shipment",
        "awaiting_merchant_receipt",
        "awaiting_replacement",
    },
    "ship-back": {"awaiting_buyer_shipment"},
    "receive": {"awaiting_merchant_receipt"},
    "ship-replacement": {"awaiting_replacement"},
    "reship": {"awaiting_reshipment"},
    "withdraw": {
        "awaiting_merchant",
        "awaiting_buyer_shipment",
        "rejected",
        "escalated",
        "awaiting_buyer_answer",
    },
    "escalate": AWAITING | {"rejected"},
    "rule": {"escalated"},
    "rate": FINAL,
    "recover-goods": {"refunded"},
    "auto_approve": {"awaiting_merchant"},
    "auto_close": {"awaiting_buyer_shipment"},
    "auto_refund": {"awaiting_merchant_receipt"},
    "reship_overdue": {"awaiting_reshipment"},
    "replacement_overdue": {"awaiting_replacement"},
    "message": ALL_STATUSES - FINAL,
    "offer": {
        "awaiting_merchant",
        "awaiting_buyer_shipment",
        "awaiting_merchant_receipt",
        "awaiting_replacement",
    },
    "accept-offer": {"awaiting_buyer_answer"},
    "decline-offer": {"awaiting_buyer_answer"},
    "offer_lapsed": {"awaiting_buyer_answer"},
    "extend": {"awaiting_merchant_receipt"},
    "escalation_lapsed": {"rejected"},
    "ruling_overdue": {"escalated"},
    "ruling_lapsed": {"escalated"},
    "turn-return": ALL_STATUSES - FINAL - {"rejected"},
    "intercept": {"awaiting_merchant"},
    "refuse-delivery": {"awaiting_merchant"},
}
# Which action each event records when it comes first.
ACTION_OF: dict[str, str] = {
    "CaseOpened": "open",
    "CaseApproved": "approve",
    "CaseRejected": "reject",
    "GoodsShippedBack": "ship-back",
    "GoodsReceived": "receive",
    "CaseRefunded": "refund",
    "ReplacementShipped": "ship-replacement",
    "MissingItemsReshipped": "reship",
    "ReshipImpossible": "reship",
    "CaseWithdrawn": "withdraw",
    "CaseEscalated": "escalate",
    "CaseRuled": "rule",
    "CaseRated": "rate",
    "GoodsRecovered": "recover-goods",
    "CaseAutoApproved": "auto_approve",
    "CaseAutoClosed": "auto_close",
    "CaseAutoRefunded": "auto_refund",
    "ReshipOverdue": "reship_overdue",
    "ReplacementOverdue": "replacement_overdue",
    "MessagePosted": "message",
    "ChangeOffered": "offer",
    "OfferAccepted": "accept-offer",
    "OfferDeclined": "decline-offer",
    "OfferLapsed": "offer_lapsed",
    "ReceiptExtended": "extend",
    "EscalationLapsed": "escalation_lapsed",
    "RulingOverdue": "ruling_overdue",
    "RulingLapsed": "ruling_lapsed",
    "CaseTurnedReturn": "turn-return",
    "ParcelIntercepted": "intercept",
    "DeliveryRefused": "refuse-delivery",
}
# The events a deadline (the system) records first.
SYSTEM_ACTIONS = {
    "CaseAutoApproved",
    "CaseAutoClosed",
    "CaseAutoRefunded",
    "ReshipOverdue",
    "ReplacementOverdue",
    "OfferLapsed",
    "EscalationLapsed",
    "RulingOverdue",
    "RulingLapsed",
}
# The statuses each event may leave the case in when it comes first.
LEADS_TO: dict[str, set[str]] = {
    "CaseOpened": {"awaiting_merchant"},
    "CaseApproved": {"refunded", "awaiting_buyer_shipment", "awaiting_reshipment"},
    "CaseAutoApproved": {"refunded", "awaiting_buyer_shipment", "awaiting_reshipment"},
    "CaseRejected": {"rejected"},
    "GoodsShippedBack": {"awaiting_merchant_receipt"},
    "ParcelIntercepted": {"awaiting_merchant_receipt"},
    "DeliveryRefused": {"awaiting_merchant_receipt"},
    "GoodsReceived": {"refunded", "awaiting_replacement", "escalated"},
    "CaseRefunded": {"refunded"},
    "ReplacementShipped": {"completed"},
    "MissingItemsReshipped": {"completed"},
    "ReshipImpossible": {"refunded"},
    "CaseWithdrawn": {"closed"},
    "CaseEscalated": {"escalated"},
    "CaseRuled": {
        "rejected",
        "closed",
        "awaiting_reshipment",
        "awaiting_buyer_shipment",
        "refunded",
    },
    "CaseAutoClosed": {"closed"},
    "CaseAutoRefunded": {"refunded"},
    "ReshipOverdue": {"refunded"},
    "ReplacementOverdue": {"refunded"},
    "ChangeOffered": {"awaiting_buyer_answer"},
    "OfferAccepted": {"refunded", "awaiting_buyer_shipment", "awaiting_reshipment"},
    "OfferDeclined": set(OFFER_FROM),
    "OfferLapsed": set(OFFER_FROM),
    "EscalationLapsed": {"closed"},
    "RulingOverdue": {"escalated"},
    "RulingLapsed": {"refunded"},
}
# The events an event coming first may bring with it, in the same command, and the one the
# status it leaves calls for.
CONSEQUENCES: dict[str, set[str]] = {
    "CaseApproved": {"CaseRefunded"},
    "CaseAutoApproved": {"CaseRefunded"},
    "GoodsReceived": {"CaseRefunded", "CaseEscalated"},
    "ReshipImpossible": {"CaseRefunded"},
    "CaseRuled": {"CaseRefunded", "FreightCharged", "AdvanceReassigned"},
    "CaseAutoRefunded": {"CaseRefunded"},
    "ReshipOverdue": {"CaseRefunded", "LateShipmentPenalty"},
    "ReplacementOverdue": {"CaseRefunded"},
    "OfferAccepted": {"CaseRefunded"},
    "RulingLapsed": {"CaseRefunded", "AdvanceReassigned"},
    "GoodsShippedBack": {"CaseRefunded", "FreightCharged"},
}
REQUIRED_CONSEQUENCE = {"refunded": "CaseRefunded", "escalated": "CaseEscalated"}
# The same on a case refunded as its goods went back (an instant refund: a CaseRefunded with the
# goods shipped back): the receipt or the clock then ends it refunded with no second refund, and
# a ruling for the merchant puts the advance on the buyer.
ADVANCE_REQUIRED = {
    "escalated": "CaseEscalated",
    "awaiting_merchant_receipt": "CaseRefunded",
    "closed": "AdvanceReassigned",
}
# What a claim must fit: the reason group the case was opened for, or the status it was
# escalated from (a claim named in neither fits every case).
CLAIM_REASON = {"missing_items": "missing_items", "wrong_item": "wrong_item"}
CLAIM_FROM = {
    "unjustified_rejection": {"rejected"},
    "disputed_receipt": {"awaiting_merchant_receipt"},
}
CASE_MODULE = "engine.case:"
ORDER_MODULE = "engine.order:"
# The event types a bundle may hold (the hash covers an event's content, not its type name: a
# type name outside these shows as a problem).
CONSEQUENCE_ONLY = frozenset({"FreightCharged", "LateShipmentPenalty", "AdvanceReassigned"})
UNCHANGED = frozenset(
    {"CaseRated", "GoodsRecovered", "MessagePosted", "ReceiptExtended", "CaseTurnedReturn"}
)
CASE_TYPES = frozenset(ACTION_OF) | CONSEQUENCE_ONLY
ORDER_TYPES = frozenset(
    {
        "OrderPlaced",
        "OrderShipped",
        "OrderDelivered",
        "CaseLinked",
        "CaseUnlinked",
        "CaseRefundBooked",
    }
)


class Report:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checkpoint: dict[str, Any] | None = None

    def add(self, message: str) -> None:
        self.problems.append(message)


def chain_hash(
    previous: str, originator_id: str, version: int, topic: str, state: dict[str, Any]
) -> str:
    content = {k: v for k, v in state.items() if k != "hash"}
    payload = {
        "originator_id": originator_id,
        "originator_version": version,
        "topic": topic,
        "state": content,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((previous + canonical).encode("utf-8")).hexdigest()


def money(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not money") from None


def money_str(value: Decimal) -> str:
    return str(value.quantize(CENT, rounding=ROUND_HALF_UP))


def when(value: Any) -> datetime:
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no offset")
    return parsed


def read_chain(
    events: Any, report: Report, label: str, module: str, types: frozenset[str]
) -> list[tuple[int, str, dict[str, Any]]]:
    """Check one aggregate's stored events; return (version, type, state) of those readable."""
    if not isinstance(events, list) or not events:
        report.add(f"{label}: no events")
        return []
    readable: list[tuple[int, str, dict[str, Any]]] = []
    previous: str | None = GENESIS_HASH
    expected = 1
    first_id = None
    for item in events:
        try:
            originator_id = str(item["originator_id"])
            version = item["originator_version"]
            topic = item["topic"]
            if "state_hex" in item:  # stored bytes that are not UTF-8: kept in hexadecimal
                raw = bytes.fromhex(item["state_hex"])
            else:
                raw = item["state"].encode("utf-8")
            if not isinstance(version, int):
                raise TypeError("bad field types")
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            report.add(f"{label}: an event entry is malformed ({exc})")
            previous = None
            continue
        first_id = first_id or originator_id
        if originator_id != first_id:
            report.add(f"{label} version {version}: belongs to another aggregate")
        for gone in range(expected, version):
            report.add(f"{label} version {gone}: is missing (deleted?)")
        gap = version != expected
        if version < expected:
            report.add(f"{label} version {version}: out of order")
        expected = max(expected, version + 1)
        try:
            state = json.loads(raw.decode("utf-8"))
        except ValueError as exc:
            report.add(f"{label} version {version}: stored bytes are not JSON ({exc})")
            previous = None
            continue
        if not isinstance(state, dict) or not isinstance(state.get("hash"), str):
            report.add(f"{label} version {version}: stored JSON carries no hash")
            previous = None
            continue
        form = json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if form != raw:
            report.add(f"{label} version {version}: stored bytes are not as the store wrote them")
        if previous is None:
            report.add(f"{label} version {version}: cannot be checked after an unreadable event")
        elif chain_hash(previous, originator_id, version, topic, state) != state["hash"]:
            why = "does not chain to the event before it" if gap else "hash does not match"
            report.add(f"{label} version {version}: {why} (altered, moved or deleted)")
        previous = state["hash"]
        if not isinstance(topic, str) or topic.partition(":")[0] + ":" != module:
            report.add(f"{label} version {version}: unexpected topic {topic!r}")
            continue
        if topic[len(module) :] not in types:
            report.add(f"{label} version {version}: unknown event type {topic!r}")
            continue
        readable.append((version, topic[len(module) :], state))
    return readable


def moved_by(before: Any, after: Any, hours: Any) -> bool:
    """An extension: the same deadline, ``hours`` (more than none) later."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return False
    if not isinstance(hours, int) or isinstance(hours, bool) or hours <= 0:
        return False
    try:
        later = when(after.get("due_at")) == when(before.get("due_at")) + timedelta(hours=hours)
    except ValueError:
        return False
    same = {k: v for k, v in after.items() if k != "due_at"}
    return later and same == {k: v for k, v in before.items() if k != "due_at"}


def check_case(events: list[tuple[int, str, dict[str, Any]]], whole: bool, report: Report) -> None:
    status: str | None = None
    head: tuple[int, str, dict[str, Any]] | None = None
    seen: set[str] = set()
    running: Any = None
    last_at: datetime | None = None
    rated = False
    extended = False
    advanced = False

    def settle() -> None:
        if head is None:
            return
        table = ADVANCE_REQUIRED if advanced else REQUIRED_CONSEQUENCE
        owed = table.get(head[2].get("status", ""))
        if head[1] in CONSEQUENCES and owed is not None and owed not in seen:
            report.add(f"version {head[0]}: {head[1]} left the case {status} but no {owed} follows")

    for version, kind, e in events:
        tag = f"version {version}"
        try:
            at = when(e["at"])
            after = e["status"]
        except (KeyError, ValueError) as exc:
            report.add(f"{tag}: unreadable ({exc})")
            continue
        # Time, then deadlines.
        if last_at is not None and at < last_at:
            report.add(f"{tag}: happened before the event before it")
        last_at = at if last_at is None else max(last_at, at)
        if kind in SYSTEM_ACTIONS:
            system_action = ACTION_OF[kind]
            fired = e.get("fired") or {}
            if (e.get("actor") or {}).get("role") != "system":
                report.add(f"{tag}: {system_action} not recorded as the system")
            if fired.get("action") != system_action:
                report.add(f"{tag}: a {system_action} that names a {fired.get('action')} deadline")
            try:
                if at < when(fired.get("due_at")):
                    report.add(
                        f"{tag}: {system_action} fired before its deadline {fired.get('due_at')}"
                    )
            except ValueError:
                report.add(f"{tag}: the fired deadline has no readable time")
            if fired != running:
                report.add(f"{tag}: fired a deadline that was not the one running")
        person = (e.get("actor") or {}).get("role") != "system" and kind in ACTION_OF
        if person and running:
            try:
                if at >= when(running.get("due_at")):
                    report.add(
                        f"{tag}: {ACTION_OF[kind]} came after {running.get('action')} fell due "
                        f"at {running.get('due_at')}: the clock should have acted first"
                    )
            except ValueError:
                report.add(f"{tag}: the deadline running has no readable time")
        if kind == "ReceiptExtended":
            if extended:
                report.add(f"{tag}: the receipt window extended a second time")
            extended = True
            if not moved_by(running, e.get("due"), e.get("hours")):
                report.add(f"{tag}: the extension does not move the running deadline by its hours")
        elif kind in UNCHANGED and e.get("due") != running:
            report.add(f"{tag}: {ACTION_OF[kind]} changed the deadline running")
        running = e.get("due")
        # Transitions.
        consequence = (
            head is not None
            and e.get("command_id") == head[2].get("command_id")
            and e.get("at") == head[2].get("at")
            and kind in CONSEQUENCES.get(head[1], set())
            and kind not in seen
            and status == after
        )
        if consequence:
            seen.add(kind)
            status = after
            advanced = advanced or (kind == "CaseRefunded" and after == "awaiting_merchant_receipt")
            continue
        settle()
        head, seen = None, set()
        action = ACTION_OF.get(kind)
        if action is None:
            report.add(f"{tag}: {kind} is recorded only as part of another action")
        elif kind == "CaseOpened":
            if status is not None or version != 1:
                report.add(f"{tag}: opened again")
            head = (version, kind, e)
        elif status is None:
            report.add(f"{tag}: {action} before the case was opened")
        else:
            if status not in ALLOWED_FROM[action]:
                report.add(f"{tag}: {action} is not allowed from {status}")
            if kind in UNCHANGED and after != status:
                report.add(f"{tag}: {action} changed the status")
            if kind == "CaseRated":
                if rated:
                    report.add(f"{tag}: rated a second time")
                rated = True
            head = (version, kind, e)
        if action and kind not in UNCHANGED and after not in LEADS_TO.get(kind, set()):
            report.add(f"{tag}: {kind} cannot leave a case {after}")
        status = after
    if whole:
        settle()


def check_claims(case: list[tuple[int, str, dict[str, Any]]], report: Report) -> None:
    opened = next((e for v, k, e in case if k == "CaseOpened"), None)
    if opened is None:
        return  # check_money names it
    try:
        reason = str(opened.get("reason", ""))
        worth = Decimal("0")
        for line in opened["lines"]:
            listed = line.get("list_price") is not None and line.get("category")
            each = money(line["list_price"] if listed else line["unit_price"])
            worth += (each * int(line["quantity"])).quantize(CENT)
        ruling: int | None = None
        paid = Decimal("0")
        for version, kind, e in case:
            if kind == "CaseEscalated":
                # A JSON value, None when absent: looked up as it is (an unhashable one raises
                # the TypeError reported below).
                claim: Any = e.get("claim")
                group = CLAIM_REASON.get(claim)
                if group is not None and reason.partition(".")[0] != group:
                    report.add(f"version {version}: a {claim} claim on a case opened for {reason}")
                statuses = CLAIM_FROM.get(claim)
                if statuses is not None and e.get("from_status") not in statuses:
                    report.add(
                        f"version {version}: a {claim} claim on a case escalated from "
                        f"{e.get('from_status')}"
                    )
            elif kind == "CaseRuled":
                upheld = e.get("in_favour_of") == "buyer" and e.get("claim") == "missing_items"
                ruling, paid = (version if upheld else None), Decimal("0")
            elif kind == "CaseRefunded" and ruling is not None:
                paid += money(e["amount"])
                if paid > worth:
                    report.add(
                        f"version {version}: the missing-items ruling of version {ruling} pays "
                        f"{money_str(paid)}, more than the {money_str(worth)} the lines are worth"
                    )
    except (KeyError, TypeError, ValueError) as exc:
        report.add(f"the claims cannot be checked: {exc}")


def check_money(
    case: list[tuple[int, str, dict[str, Any]]],
    order: list[tuple[int, str, dict[str, Any]]],
    case_id: str,
    whole: bool,
    report: Report,
) -> None:
    opened = next((e for v, k, e in case if k == "CaseOpened"), None)
    placed = next((e for v, k, e in order if k == "OrderPlaced"), None)
    if opened is None or placed is None:
        report.add("version 1: no CaseOpened or no OrderPlaced to check the money against")
        return
    try:
        # sku -> (quantity, unit price, list price or None)
        paid = {
            line["sku"]: (
                int(line["quantity"]),
                money(line["unit_price"]),
                money(line["list_price"]) if line.get("list_price") is not None else None,
            )
            for line in placed["lines"]
        }
        asked = money(opened["amount"])
        missing = str(opened.get("reason", "")).startswith("missing_items.")
        refunded_by_sku: dict[str, Decimal] = {}
        ledger = Decimal("0")
        checked = False
        for _v, kind, e in order:
            if kind == "CaseLinked" and e.get("case_id") == case_id and not checked:
                checked = True
                refundable = Decimal("0")
                for line in opened["lines"]:
                    qty, price, listed = paid.get(line["sku"], (0, Decimal("0"), None))
                    if int(line["quantity"]) > qty or money(line["unit_price"]) != price:
                        report.add(f"version 1: line {line['sku']} does not match the order")
                    each = listed if (missing and listed is not None) else price
                    value = (each * int(line["quantity"])).quantize(CENT)
                    left = (each * qty).quantize(CENT) - refunded_by_sku.get(line["sku"], 0)
                    refundable += max(Decimal("0"), min(value, left))
                if asked <= 0 or asked > refundable:
                    report.add(
                        f"version 1: {money_str(asked)} asked, at most {money_str(refundable)} "
                        "was paid and not yet refunded"
                    )
            if kind in ("CaseUnlinked", "CaseRefundBooked"):
                for sku, amount in (e.get("refunded") or {}).items():
                    refunded_by_sku[sku] = refunded_by_sku.get(sku, Decimal("0")) + money(amount)
                    if e.get("case_id") == case_id:
                        ledger += money(amount)
        if not checked:
            report.add("version 1: the order has no record of this case")
        for sku, total in refunded_by_sku.items():
            qty, price, listed = paid.get(sku, (0, Decimal("0"), None))
            if total > (max(price, listed or price) * qty).quantize(CENT):
                report.add(f"order line {sku}: refunded {money_str(total)}, more than was paid")
        refunded = Decimal("0")
        limit = asked  # lowered by an offer the buyer accepted
        for version, kind, e in case:
            offered = e.get("offered_amount") if kind == "ChangeOffered" else None
            if kind == "OfferAccepted":
                offered = e["agreed_amount"]
            if offered is not None:
                value = money(offered)
                if value <= 0 or value > asked:
                    report.add(
                        f"version {version}: {money_str(value)} offered, more than the "
                        f"{money_str(asked)} asked"
                    )
                if kind == "OfferAccepted":
                    limit = value
            if kind == "CaseRefunded":
                amount = money(e["amount"])
                refunded += amount
                if amount <= 0 or refunded > limit:
                    report.add(
                        f"version {version}: refunds reach {money_str(refunded)}, "
                        f"more than the {money_str(limit)} asked"
                    )
        if whole and case and case[-1][2].get("status") not in HOLDING and ledger != refunded:
            report.add(
                f"version {case[-1][0]}: the case refunded {money_str(refunded)}, "
                f"the order's ledger {money_str(ledger)}"
            )
    except (KeyError, TypeError, ValueError) as exc:
        report.add(f"the money cannot be checked: {exc}")


# The checkpoint: a signed Merkle tree head and an inclusion proof per event ---------------------


def leaf_hash(originator_id: str, version: int, topic: str, raw: bytes) -> bytes:
    """The Merkle leaf of one stored event: its id, version and topic as one line of canonical
    JSON, then its stored bytes exactly (engine/domain/events.py's ``leaf_bytes``)."""
    head = json.dumps(
        [originator_id, version, topic], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(b"\x00" + head.encode("utf-8") + b"\n" + raw).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def load_public_key(raw: bytes) -> Any:
    """An Ed25519 public key from PEM, or raw 32 bytes (as bytes, hex or base64)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if raw.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(raw)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    text = raw.strip()
    if len(raw) == 32:
        data = raw
    elif len(text) == 64:
        data = bytes.fromhex(text.decode("ascii"))
    else:
        data = base64.b64decode(text, validate=True)
    return Ed25519PublicKey.from_public_bytes(data)


def _bundle_events(bundle: dict[str, Any]) -> dict[tuple[str, int], tuple[str, str, bytes]]:
    found: dict[tuple[str, int], tuple[str, str, bytes]] = {}
    for aggregate, key in (("case", "events"), ("order", "order_events")):
        for item in bundle.get(key) or []:
            with contextlib.suppress(KeyError, TypeError, AttributeError, ValueError):
                raw = (
                    bytes.fromhex(item["state_hex"])
                    if "state_hex" in item
                    else item["state"].encode("utf-8")
                )
                found[(aggregate, item["originator_version"])] = (
                    str(item["originator_id"]),
                    item["topic"],
                    raw,
                )
    return found


def check_checkpoint(bundle: dict[str, Any], key: bytes | None, report: Report) -> dict[str, Any]:
    """Check the bundle's checkpoint with the public key: the signed head, then each event's
    inclusion proof. Returns what a person should know: what was checked, what not covered."""
    section = bundle.get("checkpoint")
    if section is None:
        return {
            "checked": False,
            "note": "the bundle carries no checkpoint: none of its "
            "events is anchored outside the platform's database",
        }
    try:
        text = section["head"]
        head = json.loads(text)
        if head.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {head.get('format')!r}")
        size, root = int(head["size"]), bytes.fromhex(head["root"])
        signature = bytes.fromhex(section["signature"])
        entries = list(section["proofs"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        report.add(f"the checkpoint section cannot be read ({exc})")
        return {"checked": False}
    where = f"the checkpoint at position {size} signed {head.get('signed_at')}"
    summary: dict[str, Any] = {
        "checked": False,
        "position": size,
        "signed_at": head.get("signed_at"),
        "key_id": head.get("key_id"),
    }
    if key is None:
        summary["note"] = f"{where} was not checked: give --public-key FILE (or ${PUBLIC_KEY_ENV})"
        return summary
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        report.add("the checkpoint cannot be checked: the cryptography package is not installed")
        return summary
    try:
        public = load_public_key(key)
    except (ValueError, TypeError) as exc:
        report.add(f"the public key cannot be read: {exc}")
        return summary
    raw_public = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    wanted = hashlib.sha256(raw_public).hexdigest()[:16]
    if head.get("key_id") != wanted:
        report.add(f"{where} names key {head.get('key_id')}, not the public key given ({wanted})")
        return summary
    try:
        public.verify(signature, text.encode("utf-8"))
    except InvalidSignature:
        report.add(f"{where} does not verify with the public key: its head was altered or forged")
        return summary
    summary["checked"] = True
    events = _bundle_events(bundle)
    seen: set[tuple[str, int]] = set()
    covered: dict[str, list[int]] = {"case": [], "order": []}
    uncovered: list[dict[str, Any]] = []
    for entry in entries:
        try:
            name = (str(entry["aggregate"]), int(entry["version"]))
            position, proof = entry.get("position"), entry.get("proof")
        except (KeyError, TypeError, ValueError, AttributeError):
            report.add("a checkpoint proof entry is malformed")
            continue
        label = f"{name[0]} version {name[1]}"
        if name not in events or name in seen:
            report.add(f"the checkpoint section names {label}, which the bundle does not hold once")
            continue
        seen.add(name)
        if proof is None:
            if isinstance(position, int) and position <= size:
                report.add(
                    f"{label} (log position {position}) has no proof though {where} covers it"
                )
            uncovered.append({"aggregate": name[0], "version": name[1], "position": position})
            continue
        originator_id, topic, raw = events[name]
        try:
            path = [bytes.fromhex(h) for h in proof]
            ok = verify_inclusion(
                int(position) - 1, size, leaf_hash(originator_id, name[1], topic, raw), path, root
            )
        except (TypeError, ValueError):
            ok = False
        if not ok:
            report.add(
                f"{label} (log position {position}) is not the event {where}: it was changed "
                "after it was signed"
            )
        else:
            covered[name[0]].append(name[1])
    for name in sorted(set(events) - seen):
        report.add(f"{name[0]} version {name[1]} has no entry in the checkpoint section")
    for u in uncovered:
        later = [v for v in covered[u["aggregate"]] if v > u["version"]]
        if later:
            report.add(
                f"{u['aggregate']} version {u['version']} is said not to be covered, yet its "
                f"version {later[0]} is"
            )
    summary["covered"] = sum(len(v) for v in covered.values())
    summary["uncovered"] = uncovered
    return summary


def verify(raw: bytes, key: bytes | None = None) -> Report:
    report = Report()
    try:
        bundle = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        report.add(f"the bundle is not JSON: {exc}")
        return report
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        report.add(f"not a bundle of format {FORMAT}")
        return report
    form = (json.dumps(bundle, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    if form != raw:
        report.add("the file is not byte for byte as exported (edited or reformatted)")
    case_id = str(bundle.get("case_id"))
    case = read_chain(bundle.get("events"), report, "case", CASE_MODULE, CASE_TYPES)
    order = read_chain(bundle.get("order_events"), report, "order", ORDER_MODULE, ORDER_TYPES)
    events = bundle.get("events") or []
    if any(str(e.get("originator_id")) != case_id for e in events if isinstance(e, dict)):
        report.add("the events are not all the bundle's case's")
    if case and bundle.get("head_hash") != case[-1][2].get("hash"):
        report.add("the head hash is not the last event's hash")
    whole = not (bundle.get("audit") or {}).get("as_of")
    check_case(case, whole, report)
    check_claims(case, report)
    check_money(case, order, case_id, whole, report)
    states = bundle.get("states")
    if not isinstance(states, list) or len(states) != len(case):
        report.add("the replayed states do not match the events one for one")
    else:
        for (version, _kind, e), s in zip(case, states, strict=True):
            state = s.get("state") if isinstance(s, dict) else None
            if not isinstance(state, dict) or s.get("version") != version:
                report.add(f"version {version}: no replayed state")
            elif state.get("status") != e.get("status"):
                report.add(f"version {version}: the replayed state disagrees with the event")
    report.checkpoint = check_checkpoint(bundle, key, report)
    return report


_usage = """usage: verify_bundle.py BUNDLE.json [--public-key FILE] [--json]

Checks a dispute bundle exported by `aftersales audit CASE --export FILE` with nothing but
Python's standard library: the file byte for byte as exported, each event's hash chain, the
transitions, the deadlines, the claims and the money. With --public-key FILE (default:
$AFTERSALES_PUBLIC_KEY; needs the cryptography package), also the platform's signed checkpoint
and each event's inclusion proof: events changed after they were signed fail, events newer than
the checkpoint are listed as not covered. Exit 0 when it verifies, 3 with the problems listed, 2
when the file or the key cannot be read. --json prints {"verified", "problems", "checkpoint"}."""


def _arguments(argv: list[str]) -> tuple[list[str], str | None] | None:
    args: list[str] = []
    key_path = os.environ.get(PUBLIC_KEY_ENV) or None
    items = iter(argv)
    for a in items:
        if a == "--public-key":
            key_path = next(items, None)
            if key_path is None:
                return None
        elif a.startswith("--public-key="):
            key_path = a.partition("=")[2]
        elif a != "--json":
            args.append(a)
    return args, key_path


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(_usage)
        return 0
    parsed = _arguments(argv)
    if parsed is None or len(parsed[0]) != 1:
        print("usage: verify_bundle.py BUNDLE.json [--public-key FILE] [--json]", file=sys.stderr)
        return 2
    (path,), key_path = parsed
    try:
        with open(path, "rb") as f:
            raw = f.read()
        key = None
        if key_path is not None:
            with open(key_path, "rb") as f:
                key = f.read()
    except OSError as exc:
        print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    if key is not None:
        try:
            load_public_key(key)
        except ImportError:
            print("error: checking a checkpoint needs the cryptography package", file=sys.stderr)
            return 2
        except (ValueError, TypeError) as exc:
            print(f"error: the public key {key_path} cannot be read: {exc}", file=sys.stderr)
            return 2
    report = verify(raw, key)
    head = None
    with contextlib.suppress(ValueError, AttributeError):
        head = json.loads(raw).get("head_hash")
    anchor = report.checkpoint or {}
    if "--json" in argv:
        print(
            json.dumps(
                {"verified": not report.problems, "problems": report.problems, "checkpoint": anchor}
            )
        )
    elif report.problems:
        print(f"NOT verified: {len(report.problems)} problem(s)")
        for p in report.problems:
            print(f"  {p}")
    else:
        print(f"verified: the chain and the checks hold; head hash {head}")
        if anchor.get("checked"):
            print(
                f"checkpoint at position {anchor['position']} signed {anchor['signed_at']} "
                f"(key {anchor['key_id']}): {anchor['covered']} event(s) proven signed"
            )
    if "--json" not in argv:
        if anchor.get("note"):
            print(f"note: {anchor['note']}")
        if anchor.get("uncovered"):
            named = ", ".join(
                f"{u['aggregate']} version {u['version']}" for u in anchor["uncovered"]
            )
            print(f"not yet covered by the checkpoint: {named}")
    return 0 if not report.problems else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
