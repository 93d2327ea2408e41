"""The validators of the typed commands' fields (engine/application/requests.py): each field's
value checked against its bounds (engine/domain/limits.py) and named by the key an interface
gave it in refusals.
"""

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, NamedTuple
from uuid import UUID

from pydantic import (
    BeforeValidator,
    ValidationInfo,
)
from pydantic.fields import FieldInfo

from aftersales.engine.domain.case import case_uuid
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.limits import (
    MAX_COMMAND_ID_CHARS,
    MAX_EVIDENCE,
    MAX_EVIDENCE_CHARS,
    MAX_ID_CHARS,
    MAX_ORDER_LINES,
    MAX_WHOLE_DIGITS,
    check_count,
    check_id,
    check_text,
    check_time,
    whole_number,
)
from aftersales.engine.domain.order import check_order_id, parse_case_line, parse_order_line
from aftersales.engine.domain.order_events import OrderLine
from aftersales.engine.domain.values import (
    money_str,
    parse_money,
    parse_reason,
    parse_time,
)

KEYS: Mapping[str, str] = {"in_favour_of": "for", "lines": "line", "party": "as"}


def key_of(field_name: str) -> str:
    """The key a field is given by in a JSON line or a body, and named by in messages."""
    return KEYS.get(field_name, field_name)


# Field validators: each takes what the command line (text) or JSON gives and returns the
# field's value, or raises BadInput naming the field. ---------------------------------------


def _key(info: ValidationInfo) -> str:
    return key_of(info.field_name or "value")


def _scalar(value: Any, key: str, check: Callable[[str, str], str] = check_text) -> str:
    """One value as text: strings as they are, whole numbers written out; nothing else. No
    value is longer than a text may be (``limits.MAX_TEXT_CHARS``) or holds control
    characters other than tab and newlines; ``check_id`` holds an id to less."""
    if isinstance(value, str):
        return check(value, key)
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= 10**MAX_WHOLE_DIGITS:
            raise BadInput(f"{key} has more than {MAX_WHOLE_DIGITS} digits, the most allowed")
        return str(value)
    if isinstance(value, float):
        raise BadInput(f'{key} must be a string (money is a decimal string such as "12.50")')
    if isinstance(value, (list, tuple)):
        raise BadInput(f"{key} takes one value, not a list")
    raise BadInput(f"{key} must be a string")


def _items(value: Any, key: str, limit: int) -> list[Any]:
    """A repeatable value: a list, or one value alone; at most ``limit`` of them."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return check_count([v for v in value if v is not None], key, limit)
    return [value]


def _optional_text(value: Any, info: ValidationInfo) -> str | None:
    return None if value is None else _scalar(value, _key(info))


def _required_text(
    value: Any, info: ValidationInfo, check: Callable[[str, str], str] = check_text
) -> str:
    key = _key(info)
    text = _scalar(value, key, check).strip() if value is not None else ""
    if not text:
        raise BadInput(f"{key} is required")
    return text


def _required_id(value: Any, info: ValidationInfo) -> str:
    """An id or short name (a merchant, a carrier, a waybill): one line, not too long."""
    return _required_text(value, info, check_id)


def _optional_id(value: Any, info: ValidationInfo) -> str | None:
    return None if value is None else _scalar(value, _key(info), check_id)


def _name(value: Any, info: ValidationInfo) -> str | None:
    """An id given by a person (--by, --command-id): not empty when given."""
    if value is None:
        return None
    key = _key(info)
    limit = MAX_COMMAND_ID_CHARS if key == "command_id" else MAX_ID_CHARS
    text = _scalar(value, key, lambda t, k: check_id(t, k, limit))
    if not text.strip():
        raise BadInput(f"{key} must not be empty")
    return text.strip() if key == "by" else text


def _time(value: Any, info: ValidationInfo) -> datetime | None:
    if value is None or value == "":
        return None
    key = _key(info)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise BadInput(f"{key} has no time zone")
        return check_time(value, key)
    return parse_time(_scalar(value, key), key)


def _money(value: Any, info: ValidationInfo) -> Decimal | None:
    if value is None:
        return None
    key = _key(info)
    if isinstance(value, float):  # never money: refuse rather than round
        raise BadInput(f"{key} must be a decimal string such as 12.50, not a float")
    text = str(value) if isinstance(value, Decimal) else _scalar(value, key)
    return parse_money(text, key)


def _whole(value: Any, key: str, bounds: str | None = None) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise BadInput(f"{key} {value!r} is not a whole number")
    if isinstance(value, float):
        value = int(value)
    return whole_number(_scalar(value, key).strip(), key, bounds)


def _between(low: int | None, high: int | None) -> Any:
    bounds = f"{low} to {high}" if high is not None else f"{low} or more"

    def check(value: Any, info: ValidationInfo) -> int | None:
        if value is None:
            return None
        key = _key(info)
        number = _whole(value, key, bounds)
        if (low is not None and number < low) or (high is not None and number > high):
            raise BadInput(f"{key} {number} must be {bounds}")
        return number

    return BeforeValidator(check)


def _flag(value: Any, info: ValidationInfo) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadInput(f"{_key(info)} is a flag: true or false")
    return value


def _choice(kind: type[Enum], *, leave_out: Iterable[Enum] = ()) -> Any:
    allowed = [m for m in kind if m not in set(leave_out)]

    def check(value: Any, info: ValidationInfo) -> Enum | None:
        if value is None or (isinstance(value, kind) and value in allowed):
            return value
        key = _key(info)
        text = _scalar(value, key) if not isinstance(value, Enum) else value.value
        for member in allowed:
            if member.value == text:
                return member
        words = "|".join(str(m.value) for m in allowed)
        raise BadInput(f"{key} {text!r} is not one of {words}")

    check.choices = [str(m.value) for m in allowed]  # type: ignore[attr-defined]
    return BeforeValidator(check)


def field_choices(field: FieldInfo) -> list[str] | None:
    """The words a field takes, where it is a choice (fewer than its type's, sometimes)."""
    for meta in field.metadata:
        found = getattr(getattr(meta, "func", None), "choices", None)
        if found is not None:
            return list(found)
    return None


def choices(kind: type[Enum], *, leave_out: Iterable[Enum] = ()) -> list[str]:
    return [str(m.value) for m in kind if m not in set(leave_out)]


def _evidence_reference(text: str, key: str) -> str:
    return check_id(text, key, MAX_EVIDENCE_CHARS)


def _evidence(value: Any, info: ValidationInfo) -> tuple[str, ...]:
    key = _key(info)
    found = []
    for item in _items(value, key, MAX_EVIDENCE):
        text = _scalar(item, key, _evidence_reference).strip()
        if not text:
            raise BadInput(f"{key} is required (an empty reference was given)")
        found.append(text)
    return tuple(found)


def _order_lines(value: Any, info: ValidationInfo) -> tuple[OrderLine, ...]:
    key = _key(info)
    lines: list[OrderLine] = []
    for item in _items(value, key, MAX_ORDER_LINES):
        if isinstance(item, OrderLine):
            lines.append(item)
        elif isinstance(item, Mapping):
            lines.append(_order_line_object(item, key))
        else:
            lines.append(parse_order_line(_scalar(item, key)))
    return tuple(lines)


def _order_line_object(item: Mapping[str, Any], key: str) -> OrderLine:
    """A line given as a JSON object: sku, quantity, unit_price[, category, list_price]."""
    try:
        spec = [str(item["sku"]), str(_whole(item["quantity"], "quantity"))]
        price = item["unit_price"]
    except KeyError:
        raise BadInput(f"{key}: a line needs sku, quantity, unit_price") from None
    if isinstance(price, float):
        raise BadInput(f"{key}: unit_price must be a decimal string, not a float")
    spec.append(str(price))
    category, listed = item.get("category"), item.get("list_price")
    if category or listed is not None:
        spec.append(str(category or ""))
    if listed is not None:
        spec.append(str(listed))
    return parse_order_line(":".join(spec))


class WantedLine(NamedTuple):
    """A line a case concerns, as asked: the SKU, and how many (None: the whole line)."""

    sku: str
    quantity: int | None

    def __str__(self) -> str:
        return f"{self.sku}:{self.quantity}"


def _case_lines(value: Any, info: ValidationInfo) -> tuple[WantedLine, ...]:
    key = _key(info)
    found = []
    for item in _items(value, key, MAX_ORDER_LINES):
        if isinstance(item, WantedLine):
            found.append(item)
        else:
            found.append(WantedLine(*parse_case_line(_scalar(item, key))))
    return tuple(found)


def _case_id(value: Any, info: ValidationInfo) -> UUID:
    if value is None:
        raise BadInput(f"{_key(info)} is required")
    return case_uuid(value if isinstance(value, UUID) else _scalar(value, _key(info)))


def _new_case_id(value: Any, info: ValidationInfo) -> UUID | None:
    if value is None or isinstance(value, UUID):
        return value
    text = _scalar(value, _key(info))
    try:
        return UUID(text)
    except ValueError:
        raise BadInput(f"{_key(info)} {text!r} is not a UUID") from None


def _order_id(value: Any, info: ValidationInfo) -> str:
    key = _key(info)
    if value is None:
        raise BadInput(f"{key} is required")
    return check_order_id(_scalar(value, key))


def _optional_order_id(value: Any, info: ValidationInfo) -> str | None:
    return None if value is None else _order_id(value, info)


def _reason(value: Any, info: ValidationInfo) -> str:
    return parse_reason(_required_text(value, info))


def _words(value: Any, info: ValidationInfo) -> tuple[str, ...]:
    """A repeatable list of short words (ids, codes): a list, one value, or one value with
    commas between words; at most 50 of them."""
    key = _key(info)
    found: list[str] = []
    for item in _items(value, key, 50):
        for word in _scalar(item, key).split(","):
            if word.strip():
                found.append(check_id(word.strip(), key, 64))
    return tuple(check_count(found, key, 50))


Text = Annotated[str, BeforeValidator(_required_text)]
OptionalText = Annotated[str | None, BeforeValidator(_optional_text)]
Id = Annotated[str, BeforeValidator(_required_id)]
OptionalId = Annotated[str | None, BeforeValidator(_optional_id)]
When = Annotated[datetime | None, BeforeValidator(_time)]
Money = Annotated[Decimal | None, BeforeValidator(_money)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Evidence = Annotated[tuple[str, ...], BeforeValidator(_evidence)]
Words = Annotated[tuple[str, ...], BeforeValidator(_words)]
CaseId = Annotated[UUID, BeforeValidator(_case_id)]
OrderId = Annotated[str, BeforeValidator(_order_id)]


# fingerprints are stored with command ids: this form (json.dumps(sort_keys=True,
# separators=(",", ":"))) must not change, or a retried command would look like another.
_fingerprint_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def fingerprint_value(value: Any) -> Any:
    """A field's value as a JSON-comparable value, for a command's fingerprint."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return money_str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, OrderLine):
        return value.model_dump(mode="json")
    if isinstance(value, WantedLine):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [fingerprint_value(v) for v in value]
    return value
