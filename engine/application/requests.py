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

import hashlib
from collections.abc import Mapping
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, ClassVar
from uuid import UUID, uuid4, uuid5

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)

from aftersales.engine.application.fields import (
    CaseId,
    Evidence,
    Flag,
    Id,
    Money,
    OptionalId,
    OptionalText,
    OrderId,
    Text,
    WantedLine,
    When,
    Words,
    _between,
    _case_lines,
    _choice,
    _fingerprint_json,
    _name,
    _new_case_id,
    _optional_order_id,
    _order_lines,
    _reason,
    fingerprint_value,
    key_of,
)
from aftersales.engine.domain.assignment import How
from aftersales.engine.domain.buyer import Buyer
from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.events import Act
from aftersales.engine.domain.limits import (
    MAX_EXTENSION_HOURS,
    MAX_LIST_LIMIT,
    MAX_VERSION,
)
from aftersales.engine.domain.order import Order
from aftersales.engine.domain.order_events import OrderLine, Shipment
from aftersales.engine.domain.policy import Policy
from aftersales.engine.domain.shop import AssignMode, Shop
from aftersales.engine.domain.values import (
    CaseType,
    Claim,
    Condition,
    DueAction,
    Party,
    Role,
    Status,
)

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
        known = _known_keys(cls)
        unknown = [k for k in given if k not in known]
        if unknown:
            options = ", ".join(sorted(key_of(f) for f in cls.model_fields))
            shown = _shown(str(unknown[0]))
            raise BadInput(f"{cls.name} has no option {shown!r} (options: {options})")
        return cls.model_validate(given)


@cache
def _known_keys(kind: type[Command]) -> frozenset[str]:
    """The keys a command is given by: each field's key, and its name."""
    return frozenset({key_of(f) for f in kind.model_fields} | set(kind.model_fields))


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
            "args": {k: fingerprint_value(v) for k, v in sorted(args.items())},
            "by": self.by,
            "at": self.at.isoformat() if self.at else None,
        }
        return hashlib.sha256(_fingerprint_json(data).encode()).hexdigest()


class CaseAction(Action):
    """An action on one case: loaded, checked by the domain, saved (with its order when the
    case takes or lets go of its lines)."""

    arguments: ClassVar[tuple[str, ...]] = ("case_id",)
    # Whether the action is judged on the case's order too (the engine loads it).
    needs_order: ClassVar[bool] = False

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
    freight_insurance: Flag = Field(
        False, description="The order carries return-shipping insurance (运费险)."
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


class RefuseDelivery(OrderAction):
    """Record that the buyer refused the parcel at the door (拒收): it goes back to the shop. A
    refund only awaiting the merchant on the order, and the order's lines no case holds (as a
    new refund only, the buyer's), become returns on their way back: refunded when the merchant
    confirms the parcel's return, or by the clock when its receipt window runs out."""

    name: ClassVar[str] = "order refuse-delivery"

    def apply(self, order: Order, act: Act) -> list[UUID]:
        raise NotImplementedError  # the engine's own: it opens and turns cases


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
    freight_insurance: Flag = False
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
    freight: Money = Field(
        None,
        description="The postage the buyer paid, claimed with the waybill (the merchant pays "
        "it, up to the policy's cap, when the return is its fault).",
    )

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        shipment = Shipment(carrier=self.carrier, waybill=self.waybill)
        case.ship_back(act, policy, shipment, freight=self.freight)


class InterceptParcel(CaseAction):
    """The merchant answers a refund only asked for while the parcel travels by turning the
    parcel back (拦截): the case becomes a return on its way back, refunded when the merchant
    confirms it arrived, or by the clock."""

    name: ClassVar[str] = "case intercept"
    role: ClassVar[Role] = Role.MERCHANT
    needs_order: ClassVar[bool] = True

    carrier: OptionalId = Field(None, description="The carrier bringing it back (with --waybill).")
    waybill: OptionalId = Field(
        None, description="Its waybill (with --carrier; default: the order's shipment)."
    )

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        assert order is not None
        case.intercept(act, policy, order, shipment=_shipment(self.carrier, self.waybill))


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

    in_favour_of: Annotated[Party, _choice(Party, leave_out=[Party.PLATFORM, Party.INSURER])] = (
        Field(
            validation_alias=AliasChoices("for", "in_favour_of"),
            description="Who the ruling is for.",
        )
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
    party: Annotated[Party, _choice(Party, leave_out=[Party.INSURER])] = Field(
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


# A read shows what the clock has done by its time (engine/application/as_of.py).
AS_OF_HELP = (
    "Read as of this time, ISO-8601 with offset: every deadline due by then is shown as taken "
    "(default: now)."
)


class ShowCase(Query):
    """A case as it stands: status, money, the running deadline, what is allowed now."""

    name: ClassVar[str] = "case show"
    arguments: ClassVar[tuple[str, ...]] = ("case_id",)

    case_id: CaseId
    at: When = Field(None, description=AS_OF_HELP)


class CaseOrder(StrEnum):
    """How `case list` orders cases (each order ends with the case id, so paging with
    --after is exact)."""

    OPENED = "opened"
    DUE = "due"


class ListCases(Query):
    """Cases, filtered by merchant, buyer, order, status, reason or deadline, or found by a
    search; a page at a time with --limit and --after."""

    name: ClassVar[str] = "case list"
    shows: ClassVar[str] = "cases"

    merchant: OptionalId = None
    buyer: OptionalId = None
    order: Annotated[str | None, BeforeValidator(_optional_order_id)] = None
    status: Annotated[Status | None, _choice(Status)] = None
    due_before: When = Field(None, description="Only cases with a deadline due by then.")
    limit: Annotated[int | None, _between(1, MAX_LIST_LIMIT)] = None
    search: OptionalId = Field(
        None, description="A case id's start (4 characters or more), an order id or a buyer id."
    )
    reason: OptionalId = Field(
        None, description="A reason code, or its group: quality matches quality.*."
    )
    open: Flag = Field(False, description="Only cases still open (in no final status).")
    sort: Annotated[CaseOrder | None, _choice(CaseOrder)] = Field(
        None,
        description="opened: oldest first; due: soonest deadline first, those without one last "
        "(default: opened, due with --due-before).",
    )
    after: Annotated[UUID | None, BeforeValidator(_new_case_id)] = Field(
        None,
        description="The page after this case (the last one listed), in the same order.",
    )
    at: When = Field(None, description=AS_OF_HELP)
    assignee: OptionalId = Field(
        None,
        description="Only cases assigned to this member of the shop's staff (as the staff "
        "projection has read the log).",
    )


class ShowOrder(Query):
    """An order's lines, what was refunded on each, and which case holds it."""

    name: ClassVar[str] = "order show"
    arguments: ClassVar[tuple[str, ...]] = ("order_id",)
    shows: ClassVar[str] = "order"

    order_id: OrderId
    at: When = Field(None, description=AS_OF_HELP)


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


# Shops: a merchant's own settings ------------------------------------------------------------


def parse_case_type(text: str) -> CaseType:
    for kind in CaseType:
        if kind.value == text:
            return kind
    words = "|".join(k.value for k in CaseType)
    raise BadInput(f"types: {text!r} is not one of {words}")


class ShopAction(Action):
    """A change to a shop's settings (engine/domain/shop.py), by its staff or an operator,
    recorded on the shop so every setting has a history."""

    role: ClassVar[Role] = Role.MERCHANT
    arguments: ClassVar[tuple[str, ...]] = ("merchant_id",)
    shows: ClassVar[str] = "shop"

    merchant_id: Id

    def target(self) -> str:
        return self.merchant_id

    def apply(self, shop: Shop, act: Act, policy: Policy) -> None:
        raise NotImplementedError


class SetReturnAddress(ShopAction):
    """Add or change one of the shop's return addresses (the first is the default)."""

    name: ClassVar[str] = "shop set-address"

    address_id: Id = Field(description="The shop's own id for the address (a warehouse code).")
    warehouse: Text = Field(description="The warehouse's name.")
    address: Text = Field(description="The address returned goods are sent to.")
    default: Flag = Field(False, description="Make this the default return address.")

    def apply(self, shop: Shop, act: Act, policy: Policy) -> None:
        shop.set_address(
            act,
            address_id=self.address_id,
            warehouse=self.warehouse,
            address=self.address,
            default=self.default,
        )


class RemoveReturnAddress(ShopAction):
    """Remove a return address (the default only when it is the last)."""

    name: ClassVar[str] = "shop remove-address"

    address_id: Id = Field(description="The address's id.")

    def apply(self, shop: Shop, act: Act, policy: Policy) -> None:
        shop.remove_address(act, address_id=self.address_id)


class SetAutoRule(ShopAction):
    """Add or change a rule that approves requests for the shop (a new version of it), within
    the policy's bounds: of these service types, at or under an amount, for these reasons
    (a code or its group) or these categories."""

    name: ClassVar[str] = "shop set-rule"

    rule_id: Id = Field(description="The shop's own id for the rule.")
    types: Words = Field(
        description="Service types it approves: refund_only, return_refund, exchange."
    )
    up_to: Money = Field(None, description="Only requests of at most this amount.")
    reasons: Words = Field((), description="Only for these reasons (a code, or its group).")
    categories: Words = Field((), description="Only when every line is in these categories.")

    def apply(self, shop: Shop, act: Act, policy: Policy) -> None:
        shop.set_rule(
            act,
            policy,
            rule_id=self.rule_id,
            types=tuple(parse_case_type(t) for t in self.types),
            up_to=self.up_to,
            reasons=self.reasons,
            categories=self.categories,
        )


class RemoveAutoRule(ShopAction):
    """Remove one of the shop's rules: requests are then answered by people again."""

    name: ClassVar[str] = "shop remove-rule"

    rule_id: Id = Field(description="The rule's id.")

    def apply(self, shop: Shop, act: Act, policy: Policy) -> None:
        shop.remove_rule(act, rule_id=self.rule_id)


class ShowShop(Query):
    """A shop's settings: its return addresses (which is the default) and its rules."""

    name: ClassVar[str] = "shop show"
    arguments: ClassVar[tuple[str, ...]] = ("merchant_id",)
    shows: ClassVar[str] = "shop"

    merchant_id: Id


# Staff queues: the shop's roster, and who has each case ------------------------------------


class AddStaff(ShopAction):
    """Add a member to the shop's staff, or change which cases they take when cases are
    assigned by rule (each condition given must hold; none: any case)."""

    name: ClassVar[str] = "shop add-staff"

    member: Id = Field(description="The member's id (their principal's, to sign in as).")
    reasons: Words = Field((), description="By rule: cases for these reasons (a code, or group).")
    up_to: Money = Field(None, description="By rule: cases of at most this amount.")
    skus: Words = Field((), description="By rule: cases about one of these SKUs.")

    def apply(self, shop: Shop, act: Act, policy: Policy) -> None:
        shop.add_staff(
            act, member_id=self.member, reasons=self.reasons, up_to=self.up_to, skus=self.skus
        )


class RemoveStaff(ShopAction):
    """Take a member off the shop's staff: no new case is assigned to them (the cases they
    have stay theirs until reassigned)."""

    name: ClassVar[str] = "shop remove-staff"

    member: Id = Field(description="The member's id.")

    def apply(self, shop: Shop, act: Act, policy: Policy) -> None:
        shop.remove_staff(act, member_id=self.member)


class SetAssignMode(ShopAction):
    """How a new case is assigned to the shop's staff: round_robin (over everyone) or by_rule
    (over the members whose conditions it meets; everyone when it meets no one's)."""

    name: ClassVar[str] = "shop set-assignment"

    mode: Annotated[AssignMode, _choice(AssignMode)] = Field(description="How cases are assigned.")

    def apply(self, shop: Shop, act: Act, policy: Policy) -> None:
        shop.set_assign_mode(act, self.mode)


class QueueAction(CaseAction):
    """Giving a case to one of its shop's staff, recorded on the case's assignment
    (engine/domain/assignment.py), not on the case: ``--expected-version`` is the
    assignment's version."""

    role: ClassVar[Role] = Role.MERCHANT
    shows: ClassVar[str] = "assignment"
    how: ClassVar[How]

    def member_for(self) -> str:
        raise NotImplementedError

    def apply(self, case: ReturnCase, act: Act, policy: Policy, order: Order | None = None) -> None:
        raise NotImplementedError("the engine records a queue action on the case's assignment")


class AssignCase(QueueAction):
    """Give the case to a member of the shop's staff (reassign it)."""

    name: ClassVar[str] = "case assign"
    how: ClassVar[How] = How.REASSIGN

    member: Id = Field(description="The member it goes to.")

    def member_for(self) -> str:
        return self.member


class ClaimCase(QueueAction):
    """The member acting (--by) takes the case for themselves."""

    name: ClassVar[str] = "case claim"
    how: ClassVar[How] = How.CLAIM

    def member_for(self) -> str:
        if self.by is None:
            raise BadInput("by is required: the member who claims the case")
        return self.by


class ShowAssignment(Query):
    """Who of the shop's staff has the case, and every assignment of it (who, how, by whom,
    when)."""

    name: ClassVar[str] = "case assignment"
    arguments: ClassVar[tuple[str, ...]] = ("case_id",)
    shows: ClassVar[str] = "assignment"

    case_id: CaseId


# A buyer's standing (instant refunds) ---------------------------------------------------------


class BuyerAction(Action):
    """A platform agent's change to a buyer's standing (engine/domain/buyer.py), recorded on
    the buyer so what made them eligible for instant refunds, or not, has a history."""

    role: ClassVar[Role] = Role.PLATFORM
    arguments: ClassVar[tuple[str, ...]] = ("buyer_id",)
    shows: ClassVar[str] = "buyer"

    buyer_id: Id

    def target(self) -> str:
        return self.buyer_id

    def apply(self, buyer: Buyer, act: Act) -> None:
        raise NotImplementedError


class FlagBuyer(BuyerAction):
    """Flag a buyer for abuse: their returns are refunded when the goods arrive, never at
    once (no instant refund) until the flag is cleared."""

    name: ClassVar[str] = "buyer flag"

    reason: Text = Field(description="Why (returns of empty parcels, say).")

    def apply(self, buyer: Buyer, act: Act) -> None:
        buyer.flag_abuse(act, reason=self.reason)


class ClearBuyer(BuyerAction):
    """Clear a buyer's abuse flag."""

    name: ClassVar[str] = "buyer clear"

    note: Text = Field(description="Why the flag no longer holds.")

    def apply(self, buyer: Buyer, act: Act) -> None:
        buyer.clear_flag(act, note=self.note)


class ShowBuyer(Query):
    """A buyer's standing: their abuse flag, the disputes ruled against them, and whether a
    return of theirs shipped back now would be refunded at once (an instant refund)."""

    name: ClassVar[str] = "buyer show"
    arguments: ClassVar[tuple[str, ...]] = ("buyer_id",)
    shows: ClassVar[str] = "buyer"

    buyer_id: Id
    at: When = Field(None, description="As of this time, ISO-8601 with offset (default: now).")


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
    InterceptParcel,
    RefuseDelivery,
    ShowShop,
    SetReturnAddress,
    RemoveReturnAddress,
    SetAutoRule,
    RemoveAutoRule,
    AddStaff,
    RemoveStaff,
    SetAssignMode,
    AssignCase,
    ClaimCase,
    ShowAssignment,
    FlagBuyer,
    ClearBuyer,
    ShowBuyer,
)
BY_NAME: Mapping[str, type[Command]] = {c.name: c for c in COMMANDS}
