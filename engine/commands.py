"""Every action and query as one typed command: its fields, types, limits and messages, said once.

A command is a frozen pydantic model. The command line's options, a `batch` or `import-history`
line's keys and an HTTP request's body are all derived from these models (see
``commands/cli/actions.py``), so an option added here reaches every interface with the same name,
type and message. ``Engine.handle`` runs any of them.

Each field's key is its name, except where the interfaces have always spelt it otherwise
(``for`` for ``in_favour_of``, ``line`` for ``lines``); error messages name the key. Values come
as text from the command line and as JSON values from files and HTTP: every field accepts both.
A case action knows which domain method it calls (``apply``), so adding an action is its
command, its rule in the transition table and its event.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from enum import Enum
from functools import cache
from typing import Annotated, Any, ClassVar, NamedTuple
from uuid import UUID, uuid4, uuid5

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.fields import FieldInfo

from aftersales.engine.case import ReturnCase, case_uuid
from aftersales.engine.errors import BadInput
from aftersales.engine.events import Act
from aftersales.engine.limits import (
    MAX_EVIDENCE,
    MAX_EVIDENCE_CHARS,
    MAX_EXTENSION_HOURS,
    MAX_LIST_LIMIT,
    MAX_ORDER_LINES,
    MAX_VERSION,
    MAX_WHOLE_DIGITS,
    check_count,
    check_id,
    check_text,
    check_time,
    load_json_line,
    whole_number,
)
from aftersales.engine.order import (
    Order,
    OrderLine,
    Shipment,
    check_order_id,
    parse_case_line,
    parse_order_line,
)
from aftersales.engine.policy import Policy
from aftersales.engine.values import (
    CaseType,
    Claim,
    Condition,
    DueAction,
    Party,
    Role,
    Status,
    money_str,
    parse_money,
    parse_reason,
    parse_time,
)

# Keys the interfaces spell differently from the field's name.
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
    text = _scalar(value, key, check_id)
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


Text = Annotated[str, BeforeValidator(_required_text)]
OptionalText = Annotated[str | None, BeforeValidator(_optional_text)]
Id = Annotated[str, BeforeValidator(_required_id)]
OptionalId = Annotated[str | None, BeforeValidator(_optional_id)]
When = Annotated[datetime | None, BeforeValidator(_time)]
Money = Annotated[Decimal | None, BeforeValidator(_money)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Evidence = Annotated[tuple[str, ...], BeforeValidator(_evidence)]
CaseId = Annotated[UUID, BeforeValidator(_case_id)]
OrderId = Annotated[str, BeforeValidator(_order_id)]


# fingerprints are stored with command ids: this form (json.dumps(sort_keys=True,
# separators=(",", ":"))) must not change, or a retried command would look like another.
_fingerprint_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def _plain(value: Any) -> Any:
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
        return [_plain(v) for v in value]
    return value


# The commands ---------------------------------------------------------------------------------


class Command(BaseModel):
    """What every command has: its path (``name``), and how it is validated."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, defer_build=True)

    # The command path, as on the command line and in a batch line's "action".
    name: ClassVar[str]
    # Fields given as positional arguments on the command line.
    arguments: ClassVar[tuple[str, ...]] = ()
    # How the command line shows the result: "case", "cases", "order", "tick".
    shows: ClassVar[str] = "case"
    # Whether the command only reads (never records, never creates a store).
    reads_only: ClassVar[bool] = False

    @model_validator(mode="wrap")
    @classmethod
    def _in_our_words(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        """A command built in Python is refused as one parsed from a line is: BadInput,
        naming a missing field before any malformed one."""
        if isinstance(data, Mapping):
            for name, key in _required(cls):
                if name not in data and key not in data:
                    raise BadInput(f"{key} is required")
        try:
            return handler(data)
        except ValidationError as exc:
            raise BadInput(describe(exc)) from None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Any:
        """Validate a mapping of keys to values (JSON or command-line text) into a command;
        a key given as null counts as not given. Refusals are ``BadInput`` (or ``NotFound``
        for a malformed case id) naming the key."""
        given = {k: v for k, v in data.items() if v is not None}
        known = {key_of(f) for f in cls.model_fields} | set(cls.model_fields)
        unknown = [k for k in given if k not in known]
        if unknown:
            options = ", ".join(sorted(key_of(f) for f in cls.model_fields))
            shown = _shown(str(unknown[0]))
            raise BadInput(f"{cls.name} has no option {shown!r} (options: {options})")
        return cls.model_validate(given)


@cache
def _required(kind: type[Command]) -> tuple[tuple[str, str], ...]:
    """A command's required fields: each name, and the key it is given by."""
    return tuple((n, key_of(n)) for n, f in kind.model_fields.items() if f.is_required())


def _shown(text: str, most: int = 40) -> str:
    """Some input, as a message quotes it: at most ``most`` characters of it."""
    return text if len(text) <= most else text[:most] + "..."


def describe(exc: ValidationError) -> str:
    """The first problem of a validation error, in the commands' own words."""
    error = exc.errors()[0]
    key = key_of(str(error["loc"][0])) if error["loc"] else "value"
    if error["type"] == "missing":
        return f"{key} is required"
    if error["type"] == "extra_forbidden":
        return f"there is no option {key!r}"
    return f"{key}: {error['msg']}"


class Action(Command):
    """A command that records something: every action takes these."""

    role: ClassVar[Role]

    at: When = Field(None, description="When it happened, ISO-8601 with offset (default: now).")
    by: Annotated[str | None, BeforeValidator(_name)] = Field(
        None, description="Id of the person or account acting."
    )
    command_id: Annotated[str | None, BeforeValidator(_name)] = Field(
        None, description="Idempotency key: the same action again with this key changes nothing."
    )
    expected_version: Annotated[int | None, _between(0, MAX_VERSION)] = Field(
        None, description="Refuse (exit 5) unless the case or order is still at this version."
    )

    @property
    def action(self) -> str:
        """The action as recorded with a command id."""
        return self.name

    def target(self) -> str:
        raise NotImplementedError

    def fingerprint_args(self) -> dict[str, Any]:
        common = set(Action.model_fields) | set(self.arguments)
        return {key_of(f): getattr(self, f) for f in type(self).model_fields if f not in common}

    def fingerprint(self) -> str:
        """What identifies this command's content, stored with its command id: the same id
        with other content is refused rather than taken for a retry."""
        args = self.fingerprint_args()
        data = {
            "action": self.action,
            "target": self.target(),
            "args": {k: _plain(v) for k, v in sorted(args.items())},
            "by": self.by,
            "at": self.at.isoformat() if self.at else None,
        }
        return hashlib.sha256(_fingerprint_json(data).encode()).hexdigest()


class CaseAction(Action):
    """An action on one case: loaded, checked by the domain, saved (with its order when the
    case takes or lets go of its lines)."""

    arguments: ClassVar[tuple[str, ...]] = ("case_id",)

    case_id: CaseId

    def target(self) -> str:
        return str(self.case_id)

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        """The domain's method for this action (``order``: the case's order, where the service
        loaded it because the action needs it, as a rejected case's escalation does)."""
        raise NotImplementedError


class OrderAction(Action):
    """A fact from the order system about one order."""

    role: ClassVar[Role] = Role.PLATFORM
    arguments: ClassVar[tuple[str, ...]] = ("order_id",)
    shows: ClassVar[str] = "order"

    order_id: OrderId

    def target(self) -> str:
        return self.order_id

    def apply(self, order: Order, act: Act) -> list[UUID]:
        """Record the fact; the refund-only cases it turned into returns, if any."""
        raise NotImplementedError


def _shipment(carrier: str | None, waybill: str | None) -> Shipment | None:
    if (carrier is None) != (waybill is None):
        raise BadInput("give both carrier and waybill, or neither")
    return Shipment(carrier=carrier, waybill=waybill) if carrier and waybill else None


# Orders ----------------------------------------------------------------------------------------


class PlaceOrder(OrderAction):
    """Record a placed order with its lines (unit price as paid)."""

    name: ClassVar[str] = "order place"

    merchant: Id = Field(description="The shop selling the order.")
    buyer: Id = Field(description="The buyer.")
    lines: Annotated[tuple[OrderLine, ...], BeforeValidator(_order_lines)] = Field(
        min_length=1,
        validation_alias=AliasChoices("line", "lines"),
        description="SKU:QTY:UNIT_PRICE[:CATEGORY[:LIST_PRICE]]",
    )


class ShipOrder(OrderAction):
    """Record that the merchant shipped the order."""

    name: ClassVar[str] = "order ship"

    carrier: OptionalId = Field(None, description="The carrier (with --waybill).")
    waybill: OptionalId = Field(None, description="The waybill number (with --carrier).")
    anyway: Flag = Field(
        False,
        description="The goods went out although a refund-only case opened before shipment "
        "holds the order: record it, turning that case into a return.",
    )

    def apply(self, order: Order, act: Act) -> list[UUID]:
        return order.ship(_shipment(self.carrier, self.waybill), act, anyway=self.anyway)


class DeliverOrder(OrderAction):
    """Record that the order reached the buyer (starts the no-reason window)."""

    name: ClassVar[str] = "order deliver"

    anyway: Flag = Field(
        False,
        description="Delivered (so shipped) although a refund-only case opened before shipment "
        "holds the order: record it, turning that case into a return.",
    )

    def apply(self, order: Order, act: Act) -> list[UUID]:
        return order.deliver(act, anyway=self.anyway)


class ImportOrder(Command):
    """One order of `order import`: placed, and shipped and delivered as far as its facts go,
    as one action. The order id is the key: what the store has is kept."""

    name: ClassVar[str] = "order import"
    shows: ClassVar[str] = "order"

    order_id: OrderId
    merchant: Id
    buyer: Id
    lines: Annotated[tuple[OrderLine, ...], BeforeValidator(_order_lines)] = Field(
        min_length=1, validation_alias=AliasChoices("line", "lines")
    )
    placed_at: When = None
    shipped_at: When = None
    carrier: OptionalId = None
    waybill: OptionalId = None
    delivered_at: When = None
    by: Annotated[str | None, BeforeValidator(_name)] = None

    def shipment(self) -> Shipment | None:
        return _shipment(self.carrier, self.waybill)


# Cases: the buyer ----------------------------------------------------------------------------


CASE_NAMESPACE = UUID("0c7b5f3e-8d1a-4f6e-a2b9-5e4d3c2b1a09")


def new_case_id(case_id: UUID | None, command_id: str | None) -> UUID:
    """A new case's id: given, or derived from the command id (so a script can name the case
    before it exists), else new."""
    if case_id is not None:
        return case_id
    if command_id is not None:
        return uuid5(CASE_NAMESPACE, f"case:{command_id}")
    return uuid4()


class OpenCase(Action):
    """The buyer asks for a refund, a return, an exchange or a reship."""

    name: ClassVar[str] = "case open"
    role: ClassVar[Role] = Role.BUYER
    arguments: ClassVar[tuple[str, ...]] = ("order_id",)

    order_id: OrderId
    type: Annotated[CaseType, _choice(CaseType)] = Field(description="The service asked for.")
    reason: Annotated[str, BeforeValidator(_reason)] = Field(
        description="group.detail, e.g. quality.colour_difference"
    )
    amount: Money = Field(None, description="Money asked for, e.g. 29.90.")
    lines: Annotated[tuple[WantedLine, ...], BeforeValidator(_case_lines)] = Field(
        (),
        validation_alias=AliasChoices("line", "lines"),
        description="SKU[:QTY] the case concerns (default: all)",
    )
    evidence: Evidence = Field((), description="A reference to a photo, chat log, ...")
    note: OptionalText = None
    case_id: Annotated[UUID | None, BeforeValidator(_new_case_id)] = Field(
        None, description="A UUID for the new case (default: from --command-id, else new)."
    )

    def target(self) -> str:
        return self.order_id

    def new_case_id(self) -> UUID:
        return new_case_id(self.case_id, self.command_id)

    def fingerprint_args(self) -> dict[str, Any]:
        args = super().fingerprint_args()
        args["lines"] = args.pop("line")
        return args


class ShipBack(CaseAction):
    """The buyer ships the goods back and enters the waybill."""

    name: ClassVar[str] = "case ship-back"
    role: ClassVar[Role] = Role.BUYER

    carrier: Id
    waybill: Id

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.ship_back(act, policy, Shipment(carrier=self.carrier, waybill=self.waybill))


class WithdrawCase(CaseAction):
    """The buyer withdraws the case, which closes it with no refund: while no money has moved
    and no goods are on their way back, from the merchant's review or an offer, before
    shipping the goods back, after a rejection, or during a dispute before the platform rules
    (dropping it)."""

    name: ClassVar[str] = "case withdraw"
    role: ClassVar[Role] = Role.BUYER

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.withdraw(act)


class EscalateCase(CaseAction):
    """The buyer asks the platform to intervene."""

    name: ClassVar[str] = "case escalate"
    role: ClassVar[Role] = Role.BUYER

    claim: Annotated[Claim, _choice(Claim, leave_out=[Claim.DISPUTED_RECEIPT])] = Field(
        description="What the buyer claims."
    )
    evidence: Evidence = ()
    note: OptionalText = None

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.escalate(
            act, policy, claim=self.claim, evidence=list(self.evidence), note=self.note, order=order
        )


class RateCase(CaseAction):
    """The buyer rates the service once the case has ended (once)."""

    name: ClassVar[str] = "case rate"
    role: ClassVar[Role] = Role.BUYER

    score: Annotated[int, _between(1, 5)] = Field(description="1 to 5.")
    comment: OptionalText = None

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.rate(act, score=self.score, comment=self.comment)


# Cases: the merchant -------------------------------------------------------------------------


class ApproveCase(CaseAction):
    """The merchant approves: refund only refunds at once; returns wait for the goods."""

    name: ClassVar[str] = "case approve"
    role: ClassVar[Role] = Role.MERCHANT

    return_address: OptionalText = Field(None, description="Where the buyer sends the goods.")

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.approve(act, policy, return_address=self.return_address)


class RejectCase(CaseAction):
    """The merchant rejects, after talking to the buyer."""

    name: ClassVar[str] = "case reject"
    role: ClassVar[Role] = Role.MERCHANT

    reason: Text = Field(description="Why the request is rejected.")
    communication: Text = Field(description="Reference to the talk with the buyer.")

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.reject(act, policy, reason=self.reason, communication=self.communication)


class ReceiveGoods(CaseAction):
    """The merchant confirms receipt of the returned goods."""

    name: ClassVar[str] = "case receive"
    role: ClassVar[Role] = Role.MERCHANT

    condition: Annotated[Condition, _choice(Condition)] = Field(
        Condition.OK, description="The goods' condition (default: ok)."
    )

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.receive(act, policy, condition=self.condition)


class RefundCase(CaseAction):
    """The merchant refunds the buyer what is due; a smaller amount is an offer the buyer
    accepts, declines or lets lapse."""

    name: ClassVar[str] = "case refund"
    role: ClassVar[Role] = Role.MERCHANT

    amount: Money = Field(
        None,
        description="The amount due (the default); less is offered to the buyer, not refunded.",
    )

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.refund(act, policy, amount=self.amount)


class ShipReplacement(CaseAction):
    """The merchant ships the exchange's replacement."""

    name: ClassVar[str] = "case ship-replacement"
    role: ClassVar[Role] = Role.MERCHANT

    carrier: Id
    waybill: Id

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.ship_replacement(act, Shipment(carrier=self.carrier, waybill=self.waybill))


class Reship(CaseAction):
    """The merchant reships missing items (or says it cannot)."""

    name: ClassVar[str] = "case reship"
    role: ClassVar[Role] = Role.MERCHANT

    carrier: OptionalId = None
    waybill: OptionalId = None
    cannot: Flag = Field(False, description="The merchant cannot reship: the platform pays.")
    note: OptionalText = None

    def shipment(self) -> Shipment | None:
        if self.cannot:
            if self.carrier or self.waybill:
                raise BadInput("cannot takes no carrier or waybill")
            return None
        for key in ("carrier", "waybill"):
            if not (getattr(self, key) or "").strip():
                raise BadInput(f"{key} is required")
        assert self.carrier is not None and self.waybill is not None
        return Shipment(carrier=self.carrier.strip(), waybill=self.waybill.strip())

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.reship(act, self.shipment(), note=self.note)


class RecoverGoods(CaseAction):
    """The merchant got its goods back after the platform refunded an unjustified rejection."""

    name: ClassVar[str] = "case recover-goods"
    role: ClassVar[Role] = Role.MERCHANT

    note: OptionalText = None

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.recover_goods(act, note=self.note)


# Cases: the platform and the clock -----------------------------------------------------------


class RuleCase(CaseAction):
    """The platform rules on an escalated case."""

    name: ClassVar[str] = "case rule"
    role: ClassVar[Role] = Role.PLATFORM

    in_favour_of: Annotated[Party, _choice(Party, leave_out=[Party.PLATFORM])] = Field(
        validation_alias=AliasChoices("for", "in_favour_of"), description="Who the ruling is for."
    )
    note: OptionalText = None

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.rule(act, policy, in_favour_of=self.in_favour_of, note=self.note)


class FireDeadline(CaseAction):
    """Fire a case's running deadline as the system (what the tick does for each one)."""

    name: ClassVar[str] = "case fire"
    role: ClassVar[Role] = Role.SYSTEM

    deadline: Annotated[DueAction, _choice(DueAction)]

    @property
    def action(self) -> str:
        return f"case {self.deadline.value}"

    def fingerprint_args(self) -> dict[str, Any]:
        return {}

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.fire(act, policy, self.deadline)


# Cases: negotiation --------------------------------------------------------------------------


class MessageCase(CaseAction):
    """A message about the case from the buyer, the merchant or the platform, with any
    evidence (a photo, a chat log): the talk becomes part of the record."""

    name: ClassVar[str] = "case message"

    text: Text = Field(description="What is said.")
    evidence: Evidence = Field((), description="A reference to a photo, chat log, ...")
    party: Annotated[Party, _choice(Party)] = Field(
        Party.BUYER,
        validation_alias=AliasChoices("as", "party"),
        description="Who is speaking.",
    )

    @property  # who acts is the party speaking, not fixed by the command
    def role(self) -> Role:  # type: ignore[override]
        return Role(self.party.value)

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.message(act, text=self.text, evidence=list(self.evidence))


class OfferChange(CaseAction):
    """The merchant offers the buyer another service instead (refund only for a return, say);
    the buyer has the policy's window to answer."""

    name: ClassVar[str] = "case offer"
    role: ClassVar[Role] = Role.MERCHANT

    type: Annotated[CaseType, _choice(CaseType)] = Field(
        description="The service offered instead (reship only for missing items)."
    )
    amount: Money = Field(
        None, description="Money offered, at most the amount asked (default: the amount asked)."
    )
    note: OptionalText = None

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.offer(act, policy, case_type=self.type, amount=self.amount, note=self.note)


class AcceptOffer(CaseAction):
    """The buyer accepts the merchant's offer: the case goes on as that service, approved."""

    name: ClassVar[str] = "case accept-offer"
    role: ClassVar[Role] = Role.BUYER

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.accept_offer(act, policy)


class DeclineOffer(CaseAction):
    """The buyer declines the merchant's offer: the merchant reviews the case again."""

    name: ClassVar[str] = "case decline-offer"
    role: ClassVar[Role] = Role.BUYER

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.decline_offer(act, policy)


class ExtendReceipt(CaseAction):
    """The merchant extends its window to receive the returned goods, once, with a reason."""

    name: ClassVar[str] = "case extend"
    role: ClassVar[Role] = Role.MERCHANT

    hours: Annotated[int, _between(1, MAX_EXTENSION_HOURS)] = Field(
        description="How much later the refund falls due (at most the policy's maximum)."
    )
    reason: Text = Field(description="Why more time is needed.")

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        case.extend_receipt(act, policy, hours=self.hours, reason=self.reason)


# Queries ---------------------------------------------------------------------------------------


class Query(Command):
    """A command that reads and records nothing: it never creates a store."""

    reads_only: ClassVar[bool] = True


class ShowCase(Query):
    """A case as it stands: status, money, the running deadline, what is allowed now."""

    name: ClassVar[str] = "case show"
    arguments: ClassVar[tuple[str, ...]] = ("case_id",)

    case_id: CaseId


class ListCases(Query):
    """Cases, filtered by merchant, buyer, order, status or deadline."""

    name: ClassVar[str] = "case list"
    shows: ClassVar[str] = "cases"

    merchant: OptionalId = None
    buyer: OptionalId = None
    order: Annotated[str | None, BeforeValidator(_optional_order_id)] = None
    status: Annotated[Status | None, _choice(Status)] = None
    due_before: When = Field(None, description="Only cases with a deadline due by then.")
    limit: Annotated[int | None, _between(1, MAX_LIST_LIMIT)] = None


class ShowOrder(Query):
    """An order's lines, what was refunded on each, and which case holds it."""

    name: ClassVar[str] = "order show"
    arguments: ClassVar[tuple[str, ...]] = ("order_id",)
    shows: ClassVar[str] = "order"

    order_id: OrderId


class Tick(Command):
    """Fire every deadline that has fallen due: auto-approve, auto-close, auto-refund,
    reship overdue. Running it again fires nothing twice."""

    name: ClassVar[str] = "tick"
    shows: ClassVar[str] = "tick"

    now: When = Field(
        None,
        description="Fire every deadline due at or before this time, ISO-8601 with offset "
        "(default: now).",
    )
    batch: Annotated[int, _between(1, 10_000)] = Field(
        500, description="Due deadlines read from the index per query."
    )


# Every command a person or a script can give by name, in the order the help lists them.
COMMANDS: tuple[type[Command], ...] = (
    PlaceOrder,
    ShipOrder,
    DeliverOrder,
    ShowOrder,
    OpenCase,
    ApproveCase,
    RejectCase,
    ShipBack,
    ReceiveGoods,
    RefundCase,
    ShipReplacement,
    Reship,
    WithdrawCase,
    EscalateCase,
    RuleCase,
    RateCase,
    RecoverGoods,
    ShowCase,
    ListCases,
    Tick,
    MessageCase,
    OfferChange,
    AcceptOffer,
    DeclineOffer,
    ExtendReceipt,
)
BY_NAME: Mapping[str, type[Command]] = {c.name: c for c in COMMANDS}


# Lines of `batch` and `import-history`: {"action": "case approve", "case_id": ..., ...} ------


def _bare_words() -> dict[str, str]:
    """The last word of a path, where only one path ends with it ("approve" -> "case approve")."""
    last = [name.split(" ")[-1] for name in BY_NAME]
    return {name.split(" ")[-1]: name for name in BY_NAME if last.count(name.split(" ")[-1]) == 1}


BARE_WORDS: Mapping[str, str] = _bare_words()


def resolve(action: str) -> type[Command]:
    """The command a line's "action" names: its path, or a last word only one path has."""
    words = " ".join(action.replace("_", "-").split())
    name = words if words in BY_NAME else BARE_WORDS.get(words)
    if name is None:
        matches = sorted(n for n in BY_NAME if n.split(" ")[-1] == words)
        if matches:
            raise BadInput(f"ambiguous action {action!r}: say {' or '.join(matches)}")
        raise BadInput(f"unknown action {_shown(action)!r} (actions: {', '.join(BY_NAME)})")
    return BY_NAME[name]


def parse_line(text: str | None) -> Command:
    """A JSON line (of `batch` or `import-history`) as a command; ``None`` is a line longer
    than the most a line may be (``limits.json_lines``)."""
    data = load_json_line(text)
    if not isinstance(data, dict):
        raise BadInput('a line must be a JSON object with an "action"')
    return from_line(data)


def from_line(data: Mapping[str, Any]) -> Command:
    """A JSON line as a command: "action" names it, every other key is one of its fields."""
    action = data.get("action")
    if not isinstance(action, str):
        raise BadInput('a line needs "action", e.g. "case approve"')
    kind = resolve(action)
    command: Command = kind.parse({k: v for k, v in data.items() if k != "action"})
    return command
