"""The platform's rules as data: windows, eligibility, and the version that shaped each event.

A policy is read from a TOML file (``--policy FILE`` or ``$AFTERSALES_POLICY``) or taken from the
defaults built in below, which are the article's. Its version, name plus a hash of its content, is
recorded on every event whose deadline it set, so an audit years later knows which rules applied.
"""

import hashlib
import json
from datetime import datetime, time, timedelta, tzinfo
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from aftersales.engine.domain.errors import BadInput, NotAllowed
from aftersales.engine.domain.limits import MAX_POLICY_DAYS, MAX_WINDOW_HOURS
from aftersales.engine.domain.values import CaseType, parse_money, parse_zone


def _money(value: Any) -> Decimal:
    """Money in a policy file is a string ("10.00") or a whole number, never a float."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError('money must be a string such as "10.00" or a whole number')
    try:
        return parse_money(str(value))
    except BadInput as exc:
        raise ValueError(exc.message) from None


Money = Annotated[Decimal, BeforeValidator(_money)]

Stage = Literal[
    "merchant_review",
    "buyer_shipment",
    "merchant_receipt",
    "reshipment",
    "replacement",
    "offer_answer",
    "ruling",
    "ruling_grace",
]
STAGES: tuple[Stage, ...] = (
    "merchant_review",
    "buyer_shipment",
    "merchant_receipt",
    "reshipment",
    "replacement",
    "offer_answer",
    "ruling",
    "ruling_grace",
)


class Windows(BaseModel):
    """Hours allowed at each waiting stage; any may be left out to inherit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    merchant_review_hours: int | None = Field(default=None, gt=0, le=MAX_WINDOW_HOURS)
    buyer_shipment_hours: int | None = Field(default=None, gt=0, le=MAX_WINDOW_HOURS)
    merchant_receipt_hours: int | None = Field(default=None, gt=0, le=MAX_WINDOW_HOURS)
    reshipment_hours: int | None = Field(default=None, gt=0, le=MAX_WINDOW_HOURS)
    replacement_hours: int | None = Field(default=None, gt=0, le=MAX_WINDOW_HOURS)
    # The buyer's time to answer a merchant's offer of another service.
    offer_answer_hours: int | None = Field(default=None, gt=0, le=MAX_WINDOW_HOURS)
    # The platform's time to rule on an escalated case; past it the ruling is overdue.
    ruling_hours: int | None = Field(default=None, gt=0, le=MAX_WINDOW_HOURS)
    # How long a ruling may be overdue before the platform pays the buyer on its own account.
    ruling_grace_hours: int | None = Field(default=None, gt=0, le=MAX_WINDOW_HOURS)

    def hours(self, stage: Stage) -> int | None:
        value: int | None = getattr(self, f"{stage}_hours")
        return value


class TypeWindows(Windows):
    """Windows for one service type, with optional overrides for unshipped orders."""

    unshipped: Windows | None = None


DEFAULT_WINDOWS = Windows(
    merchant_review_hours=48,
    buyer_shipment_hours=240,
    merchant_receipt_hours=240,
    reshipment_hours=24,
    replacement_hours=48,
    offer_answer_hours=48,
    ruling_hours=72,
    ruling_grace_hours=48,
)


class ShopRuleBounds(BaseModel):
    """Which rules a shop may set to act for it (engine/domain/shop.py): the service types a
    rule may approve, and the most it may approve without a person (a refund only, a return or
    an exchange). A rule that names no amount acts up to the bound."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    types: tuple[CaseType, ...] = (
        CaseType.REFUND_ONLY,
        CaseType.RETURN_REFUND,
        CaseType.EXCHANGE,
    )
    refund_only_up_to: Money = Decimal("50.00")
    return_up_to: Money = Decimal("500.00")

    def most(self, case_type: CaseType) -> Decimal:
        return self.refund_only_up_to if case_type is CaseType.REFUND_ONLY else self.return_up_to

    def check(self, types: tuple[CaseType, ...], up_to: Decimal | None) -> None:
        """Refuse a rule beyond the bounds (NotAllowed, saying which)."""
        for case_type in types:
            if case_type not in self.types:
                allowed = ", ".join(t.value for t in self.types) or "none"
                raise NotAllowed(
                    f"the policy lets no shop rule approve {case_type.value} requests "
                    f"(allowed: {allowed})"
                )
            if up_to is not None and up_to > self.most(case_type):
                raise NotAllowed(
                    f"a shop rule may approve {case_type.value} requests up to "
                    f"{self.most(case_type)}, not {up_to}"
                )

    def allows(self, case_type: CaseType, amount: Decimal) -> bool:
        return case_type in self.types and amount <= self.most(case_type)


class InstantRefund(BaseModel):
    """Instant refund (极速退款): a return refunded when the buyer ships the goods back (the
    waybill), not when they arrive. The platform advances the refund and the merchant owes it;
    goods found not in order on arrival go to the platform, which may put the advance on the
    buyer. Only for returns (退货退款) of at most ``up_to``, and buyers in good standing: no
    abuse flag on them, and at most ``disputes_lost`` disputes ruled against them in the last
    ``within_days`` days."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    up_to: Money = Decimal("200.00")
    disputes_lost: int = Field(default=0, ge=0, le=1000)
    within_days: int = Field(default=365, ge=1, le=MAX_POLICY_DAYS)


def _zone(text: str) -> str:
    parse_zone(text)
    return text


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "default"
    no_reason_return_days: int = Field(default=7, ge=0, le=MAX_POLICY_DAYS)
    # A case of any type is opened within this many days of delivery (before delivery, only
    # what may be asked before it: refund only, a lost or damaged parcel); per service type and
    # per product category another number may be set, the category's winning.
    after_sales_days: int = Field(default=15, ge=0, le=MAX_POLICY_DAYS)
    after_sales_days_by_type: dict[CaseType, Annotated[int, Field(ge=0, le=MAX_POLICY_DAYS)]] = (
        Field(default_factory=dict)
    )
    after_sales_days_by_category: dict[str, Annotated[int, Field(ge=0, le=MAX_POLICY_DAYS)]] = (
        Field(default_factory=dict)
    )
    # A rejected case may be taken to the platform for this many days after the rejection;
    # past them the clock closes it.
    escalation_days_after_rejection: int = Field(default=7, ge=0, le=MAX_POLICY_DAYS)
    # After a ruling for the merchant the buyer may appeal once, within this many days; the
    # second ruling is final. Past them the clock closes the case.
    appeal_days: int = Field(default=7, ge=0, le=MAX_POLICY_DAYS)
    # Once a case is escalated, each party may add evidence for this many hours.
    evidence_hours: int = Field(default=48, gt=0, le=MAX_WINDOW_HOURS)
    # Cases an order line may have over its lifetime, one after another.
    max_cases_per_line: int = Field(default=5, ge=1, le=1000)
    no_reason_excluded_categories: tuple[str, ...] = (
        "custom_made",
        "perishable",
        "intimate",
        "digital",
    )
    # Missing items of these categories are made good at their list price.
    listed_price_categories: tuple[str, ...] = ("gift", "accessory")
    # Wrong item upheld: the merchant bears the freight both ways, this much a leg.
    freight_per_leg: Money = Decimal("10.00")
    # The postage back of a return that is the merchant's fault (these reason groups): the
    # buyer's claim, paid by the merchant up to this much.
    freight_on_merchant: tuple[str, ...] = ("quality", "wrong_item", "logistics")
    return_freight_cap: Money = Decimal("12.00")
    # What the return-shipping insurer (运费险) pays the buyer when an insured order's goods go
    # back for no reason.
    freight_insurance_payout: Money = Decimal("8.00")
    # Reship overdue: the late-shipment compensation the merchant owes the buyer.
    late_shipment_penalty: Money = Decimal("5.00")
    windows: Windows = DEFAULT_WINDOWS
    by_type: dict[CaseType, TypeWindows] = Field(default_factory=dict)
    # The merchant may extend its receipt window once, by at most this much.
    max_receipt_extension_hours: int = Field(default=72, gt=0, le=MAX_WINDOW_HOURS)
    # The rules a shop may set to approve requests for it.
    shop_rules: ShopRuleBounds = ShopRuleBounds()
    # Instant refund (极速退款): off unless the policy sets it (``[instant_refund]``).
    instant_refund: InstantRefund | None = None
    # The zone people read times in (the platform's): an offset or a zone name. How times are
    # shown, not a rule, so it is no part of the policy's version.
    display_zone: Annotated[str, AfterValidator(_zone)] = "+08:00"
    # The platform's zone: where its calendar days begin and end. The no-reason window is
    # counted in its calendar days, as the platforms count it (``calendar_days_end``). A rule,
    # so part of the version.
    platform_zone: Annotated[str, AfterValidator(_zone)] = "Asia/Shanghai"

    @cached_property
    def version(self) -> str:
        """Name plus a short hash of the content: the same rules give the same version (the
        policy is frozen, so it is worked out once)."""
        rules = self.model_dump(mode="json", exclude={"display_zone"})
        canonical = json.dumps(rules, sort_keys=True, separators=(",", ":"))
        return f"{self.name}@{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"

    def window(self, stage: Stage, case_type: CaseType, *, shipped: bool) -> timedelta:
        """The most specific window: type and shipping state, then type, then the default."""
        candidates: list[Windows | None] = []
        per_type = self.by_type.get(case_type)
        if per_type is not None:
            if not shipped:
                candidates.append(per_type.unshipped)
            candidates.append(per_type)
        candidates.append(self.windows)
        candidates.append(DEFAULT_WINDOWS)
        for windows in candidates:
            if windows is not None and (hours := windows.hours(stage)) is not None:
                return timedelta(hours=hours)
        raise AssertionError(f"no window for {stage}")  # DEFAULT_WINDOWS has them all

    def after_sales_window(self, case_type: CaseType, categories: list[str | None]) -> int:
        """The days after delivery a case of this type on lines of these categories may be
        opened: the shortest of the lines' windows, each its category's if the policy sets one,
        else the type's, else the default."""
        by_type = self.after_sales_days_by_type.get(case_type, self.after_sales_days)
        return min(
            (self.after_sales_days_by_category.get(c or "", by_type) for c in categories),
            default=by_type,
        )

    def excludes_no_reason(self, category: str | None) -> bool:
        return category is not None and category in self.no_reason_excluded_categories

    @cached_property
    def platform_tz(self) -> tzinfo:
        return parse_zone(self.platform_zone)

    def no_reason_window_end(self, delivered_at: datetime) -> datetime:
        """The last second of the no-reason window of goods received at ``delivered_at``."""
        return calendar_days_end(delivered_at, self.no_reason_return_days, self.platform_tz)


def calendar_days_end(start: datetime, days: int, zone: tzinfo) -> datetime:
    """The last second (23:59:59, in ``zone``) of the ``days``-th calendar day after the day
    ``start`` falls on in ``zone``: a window of 7 days from goods received at 23:50 on the 3rd
    ends at 23:59:59 on the 10th, as it does for goods received at 00:10 that day."""
    if start.tzinfo is None:
        raise ValueError("a window starts at a time with its zone")
    last_day = start.astimezone(zone).date() + timedelta(days=days)
    return datetime.combine(last_day, time(23, 59, 59), tzinfo=zone)


def parse_policy(data: dict[str, Any], source: str) -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadInput(f"policy {source}: {where}: {first['msg']}") from None
