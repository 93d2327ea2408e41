"""Value types shared by the domain: roles, statuses, money and times."""

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict

from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.limits import MAX_REASON_CHARS, check_amount, check_time

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
_MONEY = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,2})?$")


class Role(StrEnum):
    BUYER = "buyer"
    MERCHANT = "merchant"
    PLATFORM = "platform"
    SYSTEM = "system"


class Status(StrEnum):
    AWAITING_MERCHANT = "awaiting_merchant"
    AWAITING_BUYER_SHIPMENT = "awaiting_buyer_shipment"
    AWAITING_MERCHANT_RECEIPT = "awaiting_merchant_receipt"
    AWAITING_REPLACEMENT = "awaiting_replacement"
    AWAITING_RESHIPMENT = "awaiting_reshipment"
    ESCALATED = "escalated"
    REJECTED = "rejected"
    REFUNDED = "refunded"
    COMPLETED = "completed"
    CLOSED = "closed"
    # A merchant's offer of another service waits for the buyer's answer.
    AWAITING_BUYER_ANSWER = "awaiting_buyer_answer"


FINAL_STATUSES = frozenset({Status.REFUNDED, Status.COMPLETED, Status.CLOSED})
AWAITING_STATUSES = frozenset(s for s in Status if s.value.startswith("awaiting_"))


class CaseType(StrEnum):
    REFUND_ONLY = "refund_only"
    RETURN_REFUND = "return_refund"
    EXCHANGE = "exchange"
    RESHIP = "reship"


RETURN_TYPES = frozenset({CaseType.RETURN_REFUND, CaseType.EXCHANGE})


class ReasonGroup(StrEnum):
    LOGISTICS = "logistics"
    QUALITY = "quality"
    BUYER = "buyer"
    MISSING_ITEMS = "missing_items"
    WRONG_ITEM = "wrong_item"


class DueAction(StrEnum):
    AUTO_APPROVE = "auto_approve"
    AUTO_CLOSE = "auto_close"
    AUTO_REFUND = "auto_refund"
    RESHIP_OVERDUE = "reship_overdue"
    REPLACEMENT_OVERDUE = "replacement_overdue"
    OFFER_LAPSED = "offer_lapsed"
    # A rejection (or a ruling for the merchant) nobody took further in its window: closed.
    ESCALATION_LAPSED = "escalation_lapsed"
    # The platform did not rule in its time: the case is marked overdue, then the platform pays.
    RULING_OVERDUE = "ruling_overdue"
    RULING_LAPSED = "ruling_lapsed"


class Condition(StrEnum):
    OK = "ok"
    DAMAGED = "damaged"
    NOT_AS_RETURNED = "not_as_returned"


class Claim(StrEnum):
    MISSING_ITEMS = "missing_items"
    WRONG_ITEM = "wrong_item"
    UNJUSTIFIED_REJECTION = "unjustified_rejection"
    OTHER = "other"
    # Raised by the engine itself when the merchant receives goods not in order.
    DISPUTED_RECEIPT = "disputed_receipt"


class Party(StrEnum):
    BUYER = "buyer"
    MERCHANT = "merchant"
    PLATFORM = "platform"
    # The return-shipping insurer (运费险): pays a buyer's postage back when an insured order's
    # goods are returned for no reason. Never a party to a case's dispute.
    INSURER = "insurer"


class Actor(BaseModel):
    """Who acted: the role comes from the action, the id names the one who took it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    id: str


def parse_money(text: str, what: str = "amount") -> Decimal:
    """Parse a decimal string such as "12.50"; never a float, at most two places, ASCII
    digits only, at most ``limits.MAX_AMOUNT``."""
    value = text.strip()
    if not _MONEY.match(value):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise BadInput(f"{what} {shown!r} is not money: write a decimal such as 12.50")
    return check_amount(Decimal(value).quantize(CENT), what)


def money_str(value: Decimal) -> str:
    return str(value.quantize(CENT, rounding=ROUND_HALF_UP))


def parse_time(text: str, what: str = "time") -> datetime:
    """Parse an ISO-8601 time that carries its offset, within the engine's calendar
    (``limits.EARLIEST_TIME`` to ``limits.LATEST_TIME``)."""
    if len(text) > 64:
        raise BadInput(f"{what} is {len(text)} characters long: not a time")
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(
            f"{what} {text!r} is not an ISO-8601 time such as 2026-11-20T09:30:00+08:00"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise BadInput(f"{what} {text!r} has no offset: add one, e.g. +08:00 or Z")
    return check_time(parsed, what)


_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


def parse_zone(text: str) -> tzinfo:
    """A time zone for people: an offset (``+08:00``), ``UTC``/``Z``, or an IANA name
    (``Asia/Shanghai``)."""
    value = text.strip()
    if value.upper() in {"UTC", "Z"}:
        return UTC
    if m := _OFFSET.match(value):
        sign, hours, minutes = m.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes))
        if delta >= timedelta(hours=24):
            raise BadInput(f"time zone {text!r}: an offset is less than 24 hours")
        return timezone(-delta if sign == "-" else delta)
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadInput(
            f"time zone {text!r} is neither an offset such as +08:00 nor a zone name such as "
            "Asia/Shanghai"
        ) from None


def time_str(value: datetime) -> str:
    return value.isoformat()


def parse_reason(text: str) -> str:
    """A reason is `group.detail`, the group one of the article's five."""
    if len(text) > MAX_REASON_CHARS:
        raise BadInput(f"reason is {len(text)} characters long: at most {MAX_REASON_CHARS}")
    group, _, detail = text.partition(".")
    if group not in {g.value for g in ReasonGroup} or not re.fullmatch(r"[a-z0-9_]+", detail):
        groups = ", ".join(g.value for g in ReasonGroup)
        raise BadInput(
            f"reason {text!r} is not group.detail with a group among {groups} "
            "(e.g. quality.colour_difference)"
        )
    return text


def reason_group(reason: str) -> ReasonGroup:
    return ReasonGroup(reason.partition(".")[0])


# A parcel lost or damaged on its way: the article's 物流问题, refunded or reshipped, also when it
# never arrived.
PARCEL_LOST_OR_DAMAGED = frozenset({"logistics.lost", "logistics.damaged"})
