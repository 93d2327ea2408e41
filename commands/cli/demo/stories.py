"""The demo's stories, as data: the article's cases, each a list of steps played in order by
``play.py``. A step is who acts, what they do (a typed command, or the clock's tick), with
which arguments, the status the case is in afterwards (``REFUSED`` for an action the rules
refuse) and what the demo says happened.

``THE_CASE`` in a step's arguments is the story's case: the one its latest ``OpenCase`` opened.
Times are the story's own, from ``START``: ``at(days, hours)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from aftersales.engine.application.requests import (
    AcceptOffer,
    ApproveCase,
    Command,
    DeliverOrder,
    EscalateCase,
    MessageCase,
    OfferChange,
    OpenCase,
    PlaceOrder,
    RateCase,
    ReceiveGoods,
    RecoverGoods,
    RefundCase,
    RejectCase,
    Reship,
    RuleCase,
    ShipBack,
    ShipReplacement,
)

CST = timezone(timedelta(hours=8), "CST")
START = datetime(2026, 11, 1, 10, 0, tzinfo=CST)

THE_CASE = "<the story's case>"
REFUSED = "refused"
# Statuses a step leaves its case in (None: an order's step, no case to show).
AWAITING_MERCHANT = "awaiting_merchant"
AWAITING_BUYER_SHIPMENT = "awaiting_buyer_shipment"
AWAITING_RECEIPT = "awaiting_merchant_receipt"
AWAITING_REPLACEMENT = "awaiting_replacement"
AWAITING_RESHIPMENT = "awaiting_reshipment"
AWAITING_BUYER_ANSWER = "awaiting_buyer_answer"
REJECTED = "rejected"
ESCALATED = "escalated"
REFUNDED = "refunded"
COMPLETED = "completed"
CLOSED = "closed"


class Tick:
    """The clock at ``now``: whatever fell due fires (the demo says what did)."""


@dataclass(frozen=True)
class Step:
    actor: str
    action: type[Command] | type[Tick]
    arguments: Mapping[str, Any]
    expect: str | None
    narration: str = ""


@dataclass(frozen=True)
class Story:
    title: str
    steps: tuple[Step, ...]


def at(days: float = 0, hours: float = 0) -> str:
    return (START + timedelta(days=days, hours=hours)).isoformat()


def placed(order_id: str, merchant: str, buyer: str, lines: list[str], when: str) -> Step:
    """The order system reports an order placed."""
    arguments = {"order_id": order_id, "merchant": merchant, "buyer": buyer, "lines": lines}
    return Step("order system", PlaceOrder, {**arguments, "at": when}, None, "order placed")


def delivered(order_id: str, when: str) -> Step:
    """The order system reports an order delivered."""
    return Step("order system", DeliverOrder, {"order_id": order_id, "at": when}, None, "delivered")


def tick(now: str, expect: str) -> Step:
    return Step("system", Tick, {"now": now}, expect)


STORIES: tuple[Story, ...] = (
    # 1. The article's phone case: a colour difference, returned and refunded.
    Story(
        "phone case colour difference",
        (
            placed(
                "KS-1001", "shop-aurora", "buyer-lin", ["CASE-RED-15:1:39.90:phone_accessory"], at()
            ),
            delivered("KS-1001", at(2)),
            Step(
                "buyer-lin",
                OpenCase,
                {
                    "order_id": "KS-1001",
                    "type": "return_refund",
                    "reason": "quality.colour_difference",
                    "amount": "39.90",
                    "evidence": ["photo:case-colour.jpg", "chat:20261103-lin"],
                    "note": "the red looks orange",
                    "at": at(3),
                },
                AWAITING_MERCHANT,
                "opened return_refund (quality.colour_difference)",
            ),
            Step(
                "staff-7",
                ApproveCase,
                {
                    "case_id": THE_CASE,
                    "return_address": "Aurora returns, 88 Wensan Rd, Hangzhou",
                    "by": "staff-7",
                    "at": at(3, 5),
                },
                AWAITING_BUYER_SHIPMENT,
                "approved, return address given",
            ),
            Step(
                "buyer-lin",
                ShipBack,
                {
                    "case_id": THE_CASE,
                    "carrier": "SF Express",
                    "waybill": "SF1234567890",
                    "at": at(4),
                },
                AWAITING_RECEIPT,
                "shipped back SF1234567890",
            ),
            Step(
                "staff-7",
                ReceiveGoods,
                {"case_id": THE_CASE, "condition": "ok", "by": "staff-7", "at": at(6)},
                REFUNDED,
                "received, condition ok: refunded",
            ),
            Step(
                "buyer-lin",
                RateCase,
                {"case_id": THE_CASE, "score": 5, "comment": "quick and polite", "at": at(6, 2)},
                REFUNDED,
                "rated 5",
            ),
        ),
    ),
    # 2. Refund only before shipping: approved means refunded at once.
    Story(
        "refund before shipping",
        (
            placed(
                "KS-1002", "shop-aurora", "buyer-wu", ["CHARGER-20W:2:59.00:electronics"], at(1)
            ),
            Step(
                "buyer-wu",
                OpenCase,
                {
                    "order_id": "KS-1002",
                    "type": "refund_only",
                    "reason": "buyer.changed_mind",
                    "amount": "118.00",
                    "at": at(1, 3),
                },
                AWAITING_MERCHANT,
                "opened refund_only (buyer.changed_mind)",
            ),
            Step(
                "staff-2",
                ApproveCase,
                {"case_id": THE_CASE, "by": "staff-2", "at": at(1, 4)},
                REFUNDED,
                "approved: refunded at once",
            ),
        ),
    ),
    # 3. An exchange for the wrong size.
    Story(
        "exchange for size",
        (
            placed("KS-1003", "shop-linen", "buyer-zhao", ["SHIRT-M:1:129.00:apparel"], at()),
            delivered("KS-1003", at(2)),
            Step(
                "buyer-zhao",
                OpenCase,
                {
                    "order_id": "KS-1003",
                    "type": "exchange",
                    "reason": "quality.size_mismatch",
                    "at": at(2, 6),
                },
                AWAITING_MERCHANT,
                "opened exchange (quality.size)",
            ),
            Step(
                "shop-linen",
                ApproveCase,
                {"case_id": THE_CASE, "at": at(3)},
                AWAITING_BUYER_SHIPMENT,
                "approved",
            ),
            Step(
                "buyer-zhao",
                ShipBack,
                {"case_id": THE_CASE, "carrier": "YTO", "waybill": "YT8800123", "at": at(3, 4)},
                AWAITING_RECEIPT,
                "shipped back",
            ),
            Step(
                "shop-linen",
                ReceiveGoods,
                {"case_id": THE_CASE, "at": at(5)},
                AWAITING_REPLACEMENT,
                "received ok: replacement owed",
            ),
            Step(
                "shop-linen",
                ShipReplacement,
                {"case_id": THE_CASE, "carrier": "YTO", "waybill": "YT8800999", "at": at(5, 3)},
                COMPLETED,
                "replacement shipped: completed",
            ),
        ),
    ),
    # 4. Custom-made goods: no no-reason return; a rejection; a follow-up case.
    Story(
        "custom-made, rejected, then a new case",
        (
            placed("KS-1004", "shop-linen", "buyer-chen", ["NAMEPLATE:1:88.00:custom_made"], at()),
            delivered("KS-1004", at(3)),
            Step(
                "buyer-chen",
                OpenCase,
                {
                    "order_id": "KS-1004",
                    "type": "return_refund",
                    "reason": "buyer.changed_mind",
                    "amount": "88.00",
                    "at": at(4),
                },
                REFUSED,
            ),
            Step(
                "buyer-chen",
                OpenCase,
                {
                    "order_id": "KS-1004",
                    "type": "return_refund",
                    "reason": "quality.engraving_error",
                    "amount": "88.00",
                    "evidence": ["photo:plate.jpg"],
                    "at": at(4, 1),
                },
                AWAITING_MERCHANT,
                "opened return_refund (quality.engraving_error)",
            ),
            Step(
                "staff-3",
                RejectCase,
                {
                    "case_id": THE_CASE,
                    "reason": "engraving matches the submitted text",
                    "communication": "call:20261105-1432",
                    "by": "staff-3",
                    "at": at(5),
                },
                REJECTED,
                "rejected after a call",
            ),
            Step(
                "buyer-chen",
                OpenCase,
                {
                    "order_id": "KS-1004",
                    "type": "refund_only",
                    "reason": "quality.engraving_error",
                    "amount": "30.00",
                    "note": "partial refund agreed on the phone",
                    "at": at(5, 2),
                },
                AWAITING_MERCHANT,
                "opened a new case, refund_only",
            ),
            Step(
                "staff-3",
                RefundCase,
                {"case_id": THE_CASE, "amount": "30.00", "by": "staff-3", "at": at(5, 3)},
                REFUNDED,
                "refunded the agreed 30.00",
            ),
        ),
    ),
    # 5. Returned goods arrive damaged: no refund, the platform must decide.
    Story(
        "returned goods damaged",
        (
            placed("KS-1005", "shop-aurora", "buyer-lin", ["EARBUDS-X:1:199.00:electronics"], at()),
            delivered("KS-1005", at(1)),
            Step(
                "buyer-lin",
                OpenCase,
                {
                    "order_id": "KS-1005",
                    "type": "return_refund",
                    "reason": "buyer.no_longer_needed",
                    "amount": "199.00",
                    "at": at(2),
                },
                AWAITING_MERCHANT,
                "opened return_refund (buyer.no_longer_needed)",
            ),
            Step(
                "staff-7",
                ApproveCase,
                {"case_id": THE_CASE, "by": "staff-7", "at": at(2, 5)},
                AWAITING_BUYER_SHIPMENT,
                "approved",
            ),
            Step(
                "buyer-lin",
                ShipBack,
                {"case_id": THE_CASE, "carrier": "ZTO", "waybill": "ZT55501", "at": at(3)},
                AWAITING_RECEIPT,
                "shipped back",
            ),
            Step(
                "staff-7",
                ReceiveGoods,
                {"case_id": THE_CASE, "condition": "damaged", "by": "staff-7", "at": at(5)},
                ESCALATED,
                "received damaged: escalated",
            ),
            # The platform rules within its 72 hours: the photos show the damage happened after
            # delivery, so the merchant need not refund (a disputed receipt ruled for it ends
            # the case).
            Step(
                "agent-3",
                RuleCase,
                {
                    "case_id": THE_CASE,
                    "in_favour_of": "merchant",
                    "note": "the damage is not from transit",
                    "by": "agent-3",
                    "at": at(6),
                },
                CLOSED,
                "ruled for the merchant: closed",
            ),
        ),
    ),
    # 6. The merchant does not answer in 48 hours: the system approves.
    Story(
        "merchant silent for 48 hours",
        (
            placed("KS-1006", "shop-linen", "buyer-wu", ["SCARF:1:45.00:apparel"], at()),
            delivered("KS-1006", at(1)),
            Step(
                "buyer-wu",
                OpenCase,
                {
                    "order_id": "KS-1006",
                    "type": "refund_only",
                    "reason": "logistics.damaged",
                    "amount": "45.00",
                    "evidence": ["photo:torn-box.jpg"],
                    "at": at(2),
                },
                AWAITING_MERCHANT,
                "opened refund_only (logistics.damaged)",
            ),
            tick(at(3, 23), AWAITING_MERCHANT),  # hour 47: nothing is due yet
            tick(at(4), REFUNDED),  # hour 48: the system approves, and refund only refunds
        ),
    ),
    # 7. Nobody acts on a return: auto-approved, then the buyer never ships it back.
    Story(
        "return never shipped back",
        (
            placed("KS-1007", "shop-aurora", "buyer-chen", ["LAMP-DESK:1:89.00:home"], at()),
            delivered("KS-1007", at(2)),
            Step(
                "buyer-chen",
                OpenCase,
                {
                    "order_id": "KS-1007",
                    "type": "return_refund",
                    "reason": "quality.flickering",
                    "amount": "89.00",
                    "at": at(3),
                },
                AWAITING_MERCHANT,
                "opened return_refund (quality.flickering)",
            ),
            # The merchant let 48 hours pass: the buyer's 10 days start now.
            tick(at(5), AWAITING_BUYER_SHIPMENT),
            # 10 days later, no waybill: the system closes the case.
            tick(at(15), CLOSED),
        ),
    ),
    # 8. A gift is missing; the merchant says it was packed; the platform upholds the claim,
    #    and the merchant cannot reship: the platform pays the gift's list price first.
    Story(
        "missing gift, platform pays first",
        (
            placed(
                "KS-1008",
                "shop-aurora",
                "buyer-zhao",
                ["EARBUDS-Y:1:159.00:electronics", "POUCH:1:0.00:gift:19.90"],
                at(),
            ),
            delivered("KS-1008", at(2)),
            Step(
                "buyer-zhao",
                OpenCase,
                {
                    "order_id": "KS-1008",
                    "type": "reship",
                    "reason": "missing_items.gift",
                    "lines": ["POUCH"],
                    "evidence": ["photo:open-box.jpg"],
                    "at": at(2, 4),
                },
                AWAITING_MERCHANT,
                "opened reship (missing_items.gift)",
            ),
            Step(
                "staff-7",
                RejectCase,
                {
                    "case_id": THE_CASE,
                    "reason": "packing photo shows the pouch",
                    "communication": "chat:20261103-zhao",
                    "by": "staff-7",
                    "at": at(2, 8),
                },
                REJECTED,
                "rejected: 'it was packed'",
            ),
            Step(
                "buyer-zhao",
                EscalateCase,
                {
                    "case_id": THE_CASE,
                    "claim": "missing_items",
                    "evidence": ["photo:open-box.jpg", "video:unboxing.mp4"],
                    "at": at(2, 9),
                },
                ESCALATED,
                "asked the platform (missing_items)",
            ),
            Step(
                "agent-3",
                RuleCase,
                {
                    "case_id": THE_CASE,
                    "in_favour_of": "buyer",
                    "note": "unboxing video shows no pouch",
                    "by": "agent-3",
                    "at": at(3),
                },
                AWAITING_RESHIPMENT,
                "ruled for the buyer: reship in 24 h",
            ),
            Step(
                "staff-7",
                Reship,
                {
                    "case_id": THE_CASE,
                    "cannot": True,
                    "note": "pouch out of stock",
                    "by": "staff-7",
                    "at": at(3, 5),
                },
                REFUNDED,
                "cannot reship: the platform pays first",
            ),
        ),
    ),
    # 9. The merchant rejects without cause; the platform refunds first and the merchant
    #    recovers the goods itself.
    Story(
        "unjustified rejection",
        (
            placed("KS-1009", "shop-linen", "buyer-lin", ["COAT:1:399.00:apparel"], at()),
            delivered("KS-1009", at(2)),
            Step(
                "buyer-lin",
                OpenCase,
                {
                    "order_id": "KS-1009",
                    "type": "refund_only",
                    "reason": "quality.torn_seam",
                    "amount": "399.00",
                    "evidence": ["photo:seam.jpg"],
                    "at": at(3),
                },
                AWAITING_MERCHANT,
                "opened refund_only (quality.torn_seam)",
            ),
            Step(
                "staff-2",
                RejectCase,
                {
                    "case_id": THE_CASE,
                    "reason": "worn",
                    "communication": "call:20261104-lin",
                    "by": "staff-2",
                    "at": at(3, 6),
                },
                REJECTED,
                "rejected: 'worn'",
            ),
            Step(
                "buyer-lin",
                EscalateCase,
                {
                    "case_id": THE_CASE,
                    "claim": "unjustified_rejection",
                    "evidence": ["photo:seam.jpg"],
                    "at": at(3, 8),
                },
                ESCALATED,
                "asked the platform (unjustified_rejection)",
            ),
            Step(
                "agent-5",
                RuleCase,
                {
                    "case_id": THE_CASE,
                    "in_favour_of": "buyer",
                    "note": "seam defect visible",
                    "by": "agent-5",
                    "at": at(4),
                },
                REFUNDED,
                "ruled for the buyer: the platform refunds",
            ),
            Step(
                "staff-2",
                RecoverGoods,
                {"case_id": THE_CASE, "note": "courier pickup", "by": "staff-2", "at": at(6)},
                REFUNDED,
                "recovered the coat from the buyer",
            ),
        ),
    ),
    # 10. Negotiation: a scratch on a return; the merchant offers part of the money back
    #     instead, the buyer keeps the goods and accepts.
    Story(
        "negotiated refund only",
        (
            placed("KS-1010", "shop-aurora", "buyer-wu", ["KETTLE-1L:1:129.00:home"], at()),
            delivered("KS-1010", at(2)),
            Step(
                "buyer-wu",
                OpenCase,
                {
                    "order_id": "KS-1010",
                    "type": "return_refund",
                    "reason": "quality.scratched",
                    "amount": "129.00",
                    "at": at(3),
                },
                AWAITING_MERCHANT,
                "opened return_refund (quality.scratched)",
            ),
            Step(
                "buyer-wu",
                MessageCase,
                {
                    "case_id": THE_CASE,
                    "text": "a scratch along the lid, see the photos",
                    "evidence": ["photo:lid-1.jpg", "photo:lid-2.jpg"],
                    "at": at(3, 1),
                },
                AWAITING_MERCHANT,
                "message with two photos",
            ),
            Step(
                "staff-7",
                MessageCase,
                {
                    "case_id": THE_CASE,
                    "party": "merchant",
                    "text": "the kettle works; would 40.00 back and keeping it suit you?",
                    "evidence": ["chat:20261104-wu"],
                    "by": "staff-7",
                    "at": at(3, 4),
                },
                AWAITING_MERCHANT,
                "message: works fine, keep it?",
            ),
            Step(
                "staff-7",
                OfferChange,
                {
                    "case_id": THE_CASE,
                    "type": "refund_only",
                    "amount": "40.00",
                    "note": "cosmetic scratch; keep the kettle",
                    "by": "staff-7",
                    "at": at(3, 5),
                },
                AWAITING_BUYER_ANSWER,
                "offered refund only, 40.00",
            ),
            Step(
                "buyer-wu",
                AcceptOffer,
                {"case_id": THE_CASE, "at": at(3, 9)},
                REFUNDED,
                "accepted: refunded 40.00",
            ),
        ),
    ),
)
