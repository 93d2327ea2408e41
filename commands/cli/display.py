"""Times as people read them: one display zone, to the second.

JSON keeps every time as the engine gives it (ISO-8601 with its offset, to the microsecond);
what a person reads shows each time in one zone (the policy's ``display_zone``, the platform's
``+08:00`` unless set, or ``--tz``), as ``2026-11-03 10:00:00 +08:00``. Report windows also take a
date, read as that day's start in the display zone."""

from __future__ import annotations

import re
from datetime import datetime, time, tzinfo
from typing import Any

from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.limits import check_time
from aftersales.engine.domain.values import parse_time

# A time as the engine writes it: an ISO-8601 date and time with an offset.
_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def show_time(value: datetime, zone: tzinfo) -> str:
    shown = value.astimezone(zone)
    offset = shown.strftime("%z")
    return f"{shown:%Y-%m-%d %H:%M:%S} {offset[:3]}:{offset[3:]}"


def for_people(value: Any, zone: tzinfo) -> Any:
    """A result with every time in it shown in the display zone, to the second."""
    if isinstance(value, str) and _ISO_TIME.match(value):
        return show_time(datetime.fromisoformat(value.replace("Z", "+00:00")), zone)
    if isinstance(value, dict):
        return {k: for_people(v, zone) for k, v in value.items()}
    if isinstance(value, list):
        return [for_people(v, zone) for v in value]
    return value


def parse_day_or_time(text: str, what: str, zone: tzinfo) -> datetime:
    """A full time with its offset, or a date: that day's start in the display zone."""
    if DATE.match(text.strip()):
        try:
            day = datetime.strptime(text.strip(), "%Y-%m-%d").date()
        except ValueError:
            raise BadInput(f"{what} {text!r} is not a date such as 2026-11-03") from None
        return check_time(datetime.combine(day, time(), tzinfo=zone), what)
    return parse_time(text, what)
