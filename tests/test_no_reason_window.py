"""The no-reason window as the platforms count it: calendar days in the platform's zone, to
23:59:59 of the 7th day after the day the goods were received, not 168 rolling hours.

The rule on the aggregates alone (the pure function and ``ReturnCase.open`` at the day's
boundary: goods received at 23:50 and at 00:10 Shanghai time), then through the engine on both
backends, and the policy's version, which the zone is part of.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4
from zoneinfo import ZoneInfo

import pytest

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import DeliverOrder, OpenCase, PlaceOrder
from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.errors import BadInput, NotAllowed
from aftersales.engine.domain.events import Act
from aftersales.engine.domain.order import Order, parse_case_line, parse_order_line
from aftersales.engine.domain.policy import Policy, calendar_days_end, parse_policy
from aftersales.engine.domain.values import Actor, CaseType, Role, Status

SHANGHAI = ZoneInfo("Asia/Shanghai")
CST = timezone(timedelta(hours=8))


def local(text: str) -> datetime:
    """A Shanghai wall-clock time (``2026-11-03 23:50``)."""
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


# The pure function ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("received", "end"),
    [
        # Received late on the 3rd: the 7th day after it is the 10th, to its last second.
        ("2026-11-03 23:50", "2026-11-10 23:59:59"),
        # Twenty minutes later it is the 4th: a whole day more.
        ("2026-11-04 00:10", "2026-11-11 23:59:59"),
        ("2026-11-04 00:00", "2026-11-11 23:59:59"),
        ("2026-11-03 23:59:59", "2026-11-10 23:59:59"),
        # Across a month's and a year's end.
        ("2026-12-28 12:00", "2027-01-04 23:59:59"),
    ],
)
def test_the_window_ends_at_the_last_second_of_the_7th_calendar_day(
    received: str, end: str
) -> None:
    assert calendar_days_end(local(received), 7, SHANGHAI) == local(end)


def test_the_day_is_the_platforms_whatever_zone_the_time_is_written_in() -> None:
    # 16:10 UTC on the 3rd is 00:10 on the 4th in Shanghai: the 4th is the day of receipt.
    received = datetime(2026, 11, 3, 16, 10, tzinfo=UTC)
    end = calendar_days_end(received, 7, SHANGHAI)
    assert end == local("2026-11-11 23:59:59")
    assert end.astimezone(UTC) == datetime(2026, 11, 11, 15, 59, 59, tzinfo=UTC)
    # The same instant on a platform counting UTC days is received on the 3rd.
    assert calendar_days_end(received, 7, UTC) == datetime(2026, 11, 10, 23, 59, 59, tzinfo=UTC)
    # An offset zone counts as the zone name does where they agree.
    assert calendar_days_end(received, 7, CST) == end
    # 0 days: the window is the rest of the day of receipt.
    assert calendar_days_end(received, 0, SHANGHAI) == local("2026-11-04 23:59:59")


def test_a_window_starts_at_a_time_with_its_zone() -> None:
    with pytest.raises(ValueError, match="zone"):
        calendar_days_end(datetime(2026, 11, 3, 23, 50), 7, SHANGHAI)


# On the aggregates --------------------------------------------------------------------------------


def act(role: Role, at: datetime) -> Act:
    ids = {Role.BUYER: "buyer-1", Role.PLATFORM: "platform"}
    return Act(at=at, actor=Actor(role=role, id=ids[role]), command_id="c", recorded_at=at)


def received_at(delivered: datetime) -> Order:
    order = Order.place(
        "KS-1",
        merchant_id="shop-1",
        buyer_id="buyer-1",
        lines=[parse_order_line("MUG:1:30.00:home")],
        act=act(Role.PLATFORM, delivered - timedelta(days=2)),
    )
    order.deliver(act(Role.PLATFORM, delivered))
    return order


def open_no_reason(order: Order, at: datetime, policy: Policy) -> ReturnCase:
    return ReturnCase.open(
        uuid4(),
        order,
        case_type=CaseType.RETURN_REFUND,
        reason="buyer.changed_mind",
        amount=Decimal("30.00"),
        lines=order.case_lines([parse_case_line("MUG")]),
        evidence=[],
        note=None,
        policy=policy,
        act=act(Role.BUYER, at),
    )


@pytest.mark.parametrize(
    ("received", "last_second", "rolling_end"),
    [
        # 23:50: the calendar gives nine minutes and 59 seconds more than 168 hours.
        ("2026-11-03 23:50", "2026-11-10 23:59:59", "2026-11-10 23:50"),
        # 00:10: almost a whole day more.
        ("2026-11-04 00:10", "2026-11-11 23:59:59", "2026-11-11 00:10"),
    ],
)
def test_a_no_reason_return_is_accepted_to_the_last_second_of_the_7th_day(
    received: str, last_second: str, rolling_end: str
) -> None:
    policy = Policy()
    assert policy.platform_zone == "Asia/Shanghai"
    # Past the 168 rolling hours, within the calendar days: accepted.
    after_rolling = local(rolling_end) + timedelta(minutes=1)
    case = open_no_reason(received_at(local(received)), after_rolling, policy)
    assert case.status is Status.AWAITING_MERCHANT
    # The last second itself, and a fraction into it: accepted.
    last = local(last_second)
    assert open_no_reason(received_at(local(received)), last, policy).status is (
        Status.AWAITING_MERCHANT
    )
    within = last + timedelta(microseconds=999_999)
    assert open_no_reason(received_at(local(received)), within, policy).status is (
        Status.AWAITING_MERCHANT
    )
    # Midnight after it: refused, naming the window's end in the platform's zone.
    with pytest.raises(NotAllowed) as refused:
        open_no_reason(received_at(local(received)), last + timedelta(seconds=1), policy)
    assert f"closed at {last.isoformat()}" in refused.value.message
    assert "7-day no-reason window" in refused.value.message


def test_the_policy_sets_the_platforms_zone_and_the_days() -> None:
    # Received 00:10 on the 4th in Shanghai, 16:10 on the 3rd in UTC.
    received = local("2026-11-04 00:10")
    utc_days = Policy(platform_zone="UTC")
    end = datetime(2026, 11, 10, 23, 59, 59, tzinfo=UTC)
    assert open_no_reason(received_at(received), end, utc_days).status is Status.AWAITING_MERCHANT
    with pytest.raises(NotAllowed, match="closed at 2026-11-10T23:59:59"):
        open_no_reason(received_at(received), end + timedelta(seconds=1), utc_days)
    three = Policy(no_reason_return_days=3)
    with pytest.raises(NotAllowed, match="3-day no-reason window closed at 2026-11-07T23:59:59"):
        open_no_reason(received_at(received), local("2026-11-08 00:00"), three)


def test_the_zone_is_part_of_the_policys_version() -> None:
    assert Policy(platform_zone="UTC").version != Policy().version
    # How times are shown is not a rule: the display zone leaves the version alone.
    assert Policy(display_zone="UTC").version == Policy().version
    assert parse_policy({"platform_zone": "+08:00"}, "f.toml").platform_zone == "+08:00"
    with pytest.raises(BadInput, match="Mars/Olympus"):
        parse_policy({"platform_zone": "Mars/Olympus"}, "f.toml")


# Through the engine, on both backends -------------------------------------------------------------


def test_the_engine_counts_the_window_in_calendar_days(engine: Engine) -> None:
    for order_id, delivered in (
        ("KS-2350", "2026-11-03T23:50:00+08:00"),
        ("KS-0010", "2026-11-03T16:10:00Z"),
    ):
        engine.handle(
            PlaceOrder(
                order_id=order_id,
                merchant="shop-1",
                buyer="buyer-1",
                lines=["MUG:1:30.00:home"],
                at="2026-11-01T10:00:00+08:00",
            )
        )
        engine.handle(DeliverOrder(order_id=order_id, at=delivered))

    def open_(order_id: str, at: str) -> dict[str, object]:
        result: dict[str, object] = engine.handle(
            OpenCase(
                order_id=order_id,
                type="return_refund",
                reason="buyer.changed_mind",
                amount="30.00",
                at=at,
            )
        )
        return result

    with pytest.raises(NotAllowed, match="closed at 2026-11-10T23:59:59"):
        open_("KS-2350", "2026-11-11T00:00:00+08:00")
    assert open_("KS-2350", "2026-11-10T23:59:59+08:00")["status"] == "awaiting_merchant"
    # Received at 00:10 on the 4th, Shanghai time (written in UTC).
    with pytest.raises(NotAllowed, match="closed at 2026-11-11T23:59:59"):
        open_("KS-0010", "2026-11-11T16:00:00Z")
    case = open_("KS-0010", "2026-11-11T15:59:59Z")
    assert case["status"] == "awaiting_merchant"
    assert case["policy_version"] == engine.policy.version
