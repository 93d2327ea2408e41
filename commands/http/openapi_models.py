"""The HTTP contract as the OpenAPI document states it: the error body, the success bodies, the
headers, and each action's request body with the limits the typed commands enforce.

These models document; they validate nothing at run time (the routes answer the engine's JSON
as it is, with ``response_model=None``), so documenting costs no CPU per request. The bodies'
limits are read from the typed commands' own fields (``engine/application/fields.py``,
``engine/domain/limits.py``), so a bound changed there is changed here.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field

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
    When,
    field_choices,
)
from aftersales.engine.application.requests import (
    AddStaff,
    AssignCase,
    CaseOrder,
    Command,
    ListCases,
    OpenCase,
    PlaceOrder,
    RemoveAutoRule,
    RemoveReturnAddress,
    RemoveStaff,
    SetAutoRule,
    SetReturnAddress,
)
from aftersales.engine.domain.assignment import How
from aftersales.engine.domain.limits import (
    MAX_EVIDENCE,
    MAX_EVIDENCE_CHARS,
    MAX_ID_CHARS,
    MAX_LIST_LIMIT,
    MAX_ORDER_LINES,
    MAX_REASON_CHARS,
    MAX_TEXT_CHARS,
)
from aftersales.engine.domain.shop import AssignMode
from aftersales.engine.domain.values import CaseType, DueAction, ReasonGroup, Status

# Errors -----------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(
        description="What went wrong, as the command line's codes: bad_input, not_allowed, "
        "not_found, conflict, store_unavailable; and HTTP's own: unauthenticated, forbidden, "
        "rate_limited, too_large, internal.",
        examples=["bad_input"],
    )
    message: str = Field(description="What went wrong, in words; never a traceback.")


class ErrorBody(BaseModel):
    """Every refusal and failure: one shape, whatever the status."""

    error: ErrorDetail


# What each status means, wherever it is answered.
ERROR_STATUSES: Mapping[int, str] = {
    401: "No key, or an unknown, revoked or expired one (`unauthenticated`).",
    403: "The key's principal may not do this (`forbidden`).",
    404: "No such case or order, or one the caller may not read (`not_found`).",
    405: "The path does not take this method (`bad_input`, with `Allow`).",
    409: "Not allowed by the rules in the case's or order's state (`not_allowed`).",
    412: "`If-Match` names a version the case or order is no longer at, or a concurrent change "
    "that retrying did not resolve (`conflict`).",
    413: "The body is larger than 64 KiB (`too_large`).",
    422: "Bad input: a value out of its bounds, a missing field, a body that is not a JSON "
    "object nested at most 8 deep, a malformed `If-Match` (`bad_input`).",
    429: "Too many refused requests from this key or address (`rate_limited`, with `Retry-After`).",
    503: "The store failed; try again (`store_unavailable`).",
}
HEADER_DOCS: Mapping[str, dict[str, Any]] = {
    "ETag": {
        "description": "The case's or order's version, e.g. \"3\": send it back as `If-Match`.",
        "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
    },
    "X-Projection-Lag": {
        "description": "Events the report's projection has still to apply (`project run`).",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "Retry-After": {
        "description": "Seconds until the key or address may be refused again.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "WWW-Authenticate": {"description": "`Bearer`.", "schema": {"type": "string"}},
    "Allow": {"description": "The methods the path takes.", "schema": {"type": "string"}},
}


def _read_header(description: str, pattern: str) -> dict[str, Any]:
    """What a header a read store adds is (``serve --read-store``, read_routing.py)."""
    schema = {"type": "string", "pattern": pattern}
    return {"description": f"With a read store: {description}", "schema": schema}


NUMBER, SECONDS = "^[0-9]+$", "^[0-9]+(\\.[0-9]+)?$"
HEADER_DOCS = {
    **HEADER_DOCS,
    "X-Read-From": _read_header(
        "which server answered the read, `standby` or `primary` (a read carrying "
        "`X-Read-After` the standby had not replayed in time).",
        "^(standby|primary)$",
    ),
    "X-Read-Position": _read_header(
        "the log position the answer reflects (the highest event position the server "
        "answering had).",
        NUMBER,
    ),
    "X-Read-Behind": _read_header(
        "how many positions the answer is behind the primary's log.", NUMBER
    ),
    "X-Replay-Lag": _read_header(
        "seconds of replay the standby is behind the primary (the age of the last transaction "
        "it replayed while WAL is still to replay; 0 when caught up).",
        SECONDS,
    ),
    "X-Read-Waited": _read_header(
        "on a read carrying `X-Read-After`, the seconds it waited for the standby to replay "
        "that far.",
        SECONDS,
    ),
    "X-Read-After": _read_header(
        "on an action, where it landed (a WAL position, e.g. 0/3000148), also set as the "
        "`aftersales_read_after` cookie; send it back on a read as `X-Read-After` to see the "
        "action.",
        "^[0-9A-F]{1,8}/[0-9A-F]{1,8}$",
    ),
}
_ERROR_HEADERS = {401: ["WWW-Authenticate"], 405: ["Allow"], 429: ["Retry-After"]}
# Every route that reads the store with a key.
KEYED = (401, 403, 429, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries for these error statuses, each with the error body."""
    found: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses)):
        entry: dict[str, Any] = {"model": ErrorBody, "description": ERROR_STATUSES[status]}
        if status in _ERROR_HEADERS:
            entry["headers"] = {h: HEADER_DOCS[h] for h in _ERROR_HEADERS[status]}
        found[status] = entry
    return found


def responses(
    success: type[BaseModel] | Any,
    *errors: int,
    status: int = 200,
    headers: Iterable[str] = (),
    created: bool = False,
) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses``: its success body (``status``, and 201 as well when it
    ``created`` something), with ``headers``, and every error it can answer."""
    ok: dict[str, Any] = {"model": success, "description": "Success."}
    if headers:
        ok["headers"] = {h: HEADER_DOCS[h] for h in headers}
    found: dict[int | str, dict[str, Any]] = {status: ok}
    if created:
        found[201] = {**ok, "description": "Created (200: an Idempotency-Key replayed it)."}
        found[200] = {**ok, "description": "The first result again, for a replayed key."}
    return {**found, **error_responses(*KEYED, *errors)}


# Success bodies ---------------------------------------------------------------------------------

Time = Field(json_schema_extra={"format": "date-time"})
Decimal2 = Field(description="A decimal string with two places, e.g. 39.90.", examples=["39.90"])
# What a read adds (actions answer as recorded): the time it shows, and what the clock took.
AsOf = Field(
    None,
    description="The time the read shows it as of (reads only).",
    json_schema_extra={"format": "date-time"},
)
PendingClock: list[dict[str, Any]] = Field(
    default_factory=list,
    description="The deadlines due by the read's time, shown as taken; the next tick records "
    "them (reads only).",
)


class CaseLine(BaseModel):
    sku: str
    quantity: int
    value: str = Decimal2


class CaseView(BaseModel):
    """A case as `case show --json` gives it (and every case action answers)."""

    case_id: str = Field(json_schema_extra={"format": "uuid"})
    order_id: str
    merchant_id: str
    buyer_id: str
    type: CaseType
    reason: str
    status: Status
    amount: str = Decimal2
    refunded_amount: str = Decimal2
    refund_paid_by: str | None
    instant_refund: bool = Field(
        description="Refunded by the platform as the goods were shipped back (极速退款): the "
        "merchant owes it, and still confirms the goods' arrival."
    )
    due_at: str | None = Time
    due_action: DueAction | None
    version: int
    after_sales_until: str | None = Time
    escalation_until: str | None = Time
    lines: list[CaseLine]
    evidence: list[str]
    note: str | None
    follows: str | None
    opened_at: str = Time
    updated_at: str = Time
    return_address: str | None
    rejection: dict[str, Any] | None
    return_shipment: dict[str, Any] | None
    receipt_condition: str | None
    replacement_shipment: dict[str, Any] | None
    reshipment: dict[str, Any] | None
    escalation: dict[str, Any] | None
    ruling: dict[str, Any] | None
    ruling_overdue: bool
    freight_on_merchant: bool
    late_shipment: bool
    goods_recovered: bool
    ledger: list[dict[str, Any]]
    rating: dict[str, Any] | None
    policy_version: str | None
    messages: list[dict[str, Any]]
    offers: list[dict[str, Any]]
    receipt_extension: dict[str, Any] | None
    allowed_actions: list[str] = Field(description="What may be done to the case now.")
    as_of: str | None = AsOf
    pending_clock: list[dict[str, Any]] = PendingClock


class ListedCase(BaseModel):
    """A case as `case list --json` lists it."""

    case_id: str = Field(json_schema_extra={"format": "uuid"})
    order_id: str
    merchant_id: str
    buyer_id: str
    type: CaseType
    reason: str
    status: Status
    amount: str = Decimal2
    refunded_amount: str = Decimal2
    due_at: str | None = Time
    due_action: DueAction | None
    opened_at: str = Time
    updated_at: str = Time
    version: int
    pending_clock: list[dict[str, Any]] = PendingClock


class OrderViewLine(BaseModel):
    sku: str
    quantity: int
    unit_price: str = Decimal2
    category: str | None
    list_price: str | None
    refunded: str = Decimal2
    open_case_id: str | None = Field(description="The open case holding the line, if any.")


class OrderView(BaseModel):
    """An order as `order show --json` gives it (and every order action answers)."""

    order_id: str
    merchant_id: str
    buyer_id: str
    freight_insurance: bool = Field(description="It carries return-shipping insurance (运费险).")
    lines: list[OrderViewLine]
    total: str = Decimal2
    placed_at: str = Time
    shipped_at: str | None = Time
    carrier: str | None
    waybill: str | None
    delivered_at: str | None = Time
    case_ids: list[str]
    version: int
    as_of: str | None = AsOf
    pending_clock: list[dict[str, Any]] = PendingClock


class ShopAddressView(BaseModel):
    address_id: str
    warehouse: str
    address: str
    default: bool = Field(description="The address returns approved without one are sent to.")


class ShopRuleView(BaseModel):
    rule_id: str
    version: int = Field(description="Each change of a rule is a new version of it.")
    types: list[str]
    up_to: str | None = Decimal2
    reasons: list[str]
    categories: list[str]


class ShopStaffView(BaseModel):
    """One of the shop's staff, and the cases they take when cases are assigned by rule."""

    member_id: str
    reasons: list[str]
    up_to: str | None = Decimal2
    skus: list[str]


class AssignmentEntry(BaseModel):
    member: str
    how: How
    previous: str | None
    at: str = Time
    by: str


class AssignmentView(BaseModel):
    """Who of the shop's staff has a case, and each assignment of it (`case assignment`)."""

    case_id: str = Field(json_schema_extra={"format": "uuid"})
    merchant_id: str
    assignee: str | None
    how: How | None
    version: int
    history: list[AssignmentEntry]


class ShopView(BaseModel):
    """A shop's settings as `shop show --json` gives them (and every shop action answers)."""

    merchant_id: str
    version: int
    return_addresses: list[ShopAddressView]
    rules: list[ShopRuleView]
    assign_mode: AssignMode
    staff: list[ShopStaffView]


class BuyerFlagView(BaseModel):
    reason: str
    by: str
    at: str = Time


class DisputeLostView(BaseModel):
    case_id: str = Field(json_schema_extra={"format": "uuid"})
    at: str = Time


class InstantRefundView(BaseModel):
    """Whether a return of the buyer's shipped back now is refunded at once."""

    eligible: bool
    why_not: str | None
    up_to: str | None = Decimal2


class BuyerView(BaseModel):
    """A buyer's standing as `buyer show --json` gives it (a buyer action answers the same,
    without ``instant_refund``)."""

    buyer_id: str
    version: int
    flagged: bool
    flag: BuyerFlagView | None
    disputes_lost: list[DisputeLostView]
    instant_refund: InstantRefundView | None = None


class AuditEvent(BaseModel):
    version: int
    type: str
    occurred_at: str | None
    recorded_at: str | None
    actor: dict[str, Any] | None
    data: dict[str, Any] | None
    status_after: str | None
    due: dict[str, Any] | None
    command_id: str | None
    hash: str | None


class AuditView(BaseModel):
    """A case's history replayed from its events, as `audit --json` gives it."""

    case_id: str
    events: list[AuditEvent]
    state: dict[str, Any] | None = Field(description="The case replayed, as `case show`.")
    verified: bool
    problems: list[dict[str, Any]]
    head_hash: str | None
    as_of: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None


class DashboardView(BaseModel):
    """As `report dashboard --json` (docs/reports.md)."""

    merchant_id: str | None
    has_cases: bool
    now: str = Time
    window_days: int
    open_cases: dict[str, Any]
    under_intervention: int
    rulings_overdue: dict[str, Any]
    deadlines: dict[str, Any]
    system_decided_30d: dict[str, Any]
    refunded_30d: dict[str, Any]
    median_first_response_seconds: float | None
    median_time_to_refund_seconds: float | None
    rating: dict[str, Any]
    top_reasons: list[Any]


class ReturnRateRow(BaseModel):
    """One group of `report return-rates --json` (docs/reports.md)."""

    key: str | None
    orders: int
    gmv: str = Decimal2
    cases: int
    orders_with_cases: int
    return_rate: float
    refunded_amount: str = Decimal2
    refund_rate: float
    quality_return_rate: float
    dispute_rate: float
    timeouts: int


class MeasuresRow(BaseModel):
    """One merchant of `report measures --json` (docs/reports.md: the platforms' own measures);
    a rate is null where there is nothing to divide by, a time null where nothing was answered."""

    merchant_id: str
    paid_orders: int
    disputes_lost: int
    dispute_rate: float | None
    delivered_orders: int
    quality_refund_orders: int
    quality_refunded: str = Decimal2
    quality_return_rate: float | None
    responses: int
    answered_by_merchant: int
    answered_by_clock: int
    median_response_seconds: int | None
    p90_response_seconds: int | None


class StaffRow(BaseModel):
    """One member of a shop's staff, as `report staff --json` lists them (docs/reports.md)."""

    merchant_id: str
    member: str = Field(description="The member who has the cases now.")
    open: int
    overdue: int = Field(description="Open cases past their deadline, not yet taken.")
    opened: int = Field(description="Cases opened in the period now in the member's queue.")
    median_first_response_seconds: int | None
    timeouts: int = Field(description="Cases the system decided because the shop did not.")


class StaffReport(BaseModel):
    since: str
    until: str
    members: list[StaffRow]
    position: int | None = Field(description="The log position the figures reflect.")


class LedgerRow(BaseModel):
    """One merchant's totals, as `ledger --json` (docs/reports.md)."""

    model_config = ConfigDict(extra="allow")

    merchant_id: str
    entries: int


class Health(BaseModel):
    ok: bool
    store: str | None = Field(description="sqlite or postgresql; null before the engine opens.")


# Request headers ---------------------------------------------------------------------------------

IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'Refuse (412) unless the case or order is still at this version: "N" as '
    "an ETag gives it (W/ and the quotes are optional); `*` is any current version (the same "
    "as no header). Anything else is 422.",
    "schema": {"type": "string", "pattern": r'^(\*|(W/)?("[0-9]{1,9}"|[0-9]{1,9}))$'},
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The same request again with this key gives the first result again and "
    "records nothing; the same key with another body is 422. Each principal's keys are its own.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"^[!-~]+$"},
}


# Request bodies: each field's limits, from the typed commands' fields ----------------------------

_NO_CONTROL = r"^[^\u0000-\u001f\u007f]*$"
_TEXT_CHARS = r"[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]"
TEXT = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_TEXT_CHARS,
    "pattern": rf"^{_TEXT_CHARS}*[^\s\u0000-\u001f\u007f]{_TEXT_CHARS}*$",
}
ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_CHARS,
    "pattern": r"^[^\u0000-\u001f\u007f]*[^\s\u0000-\u001f\u007f][^\u0000-\u001f\u007f]*$",
}
# An id that may be left empty (the same as not given).
OPTIONAL_ID = {**ID, "minLength": 0, "pattern": _NO_CONTROL}
ORDER_ID = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"}
# A merchant's id in a path (/v1/shops/{merchant_id}): an id as any command takes it.
MERCHANT_ID = ID
MONEY = {
    "type": "string",
    "pattern": r"^[0-9]{1,9}(\.[0-9]{1,2})?$",
    "description": "A decimal string, at most two places, e.g. 29.90 (never a JSON number).",
}
TIME = {
    "type": "string",
    # Not "format": "date-time" (RFC 3339 asks for the seconds; the engine takes a time without
    # them). Years 2001 to 2098, so that no offset takes a time out of the engine's calendar.
    "pattern": r"^20(0[1-9]|[1-8][0-9]|9[0-8])-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])$",
    "description": "ISO-8601 with an offset (seconds optional), from 2000 to before 2100.",
}
# A time in a query: empty is the same as not given.
QUERY_TIME = {
    "anyOf": [TIME, {"type": "string", "maxLength": 0}],
    "description": "ISO-8601 with an offset (seconds optional); empty: not given.",
}
EVIDENCE = {
    "type": "array",
    "maxItems": MAX_EVIDENCE,
    "items": {**ID, "maxLength": MAX_EVIDENCE_CHARS},
    "description": "References to photos, chat logs, ...",
}
FIELD_SCHEMAS: list[tuple[Any, dict[str, Any]]] = [
    (Text, TEXT),
    (OptionalText, {**TEXT, "minLength": 0, "pattern": f"^{_TEXT_CHARS}*$"}),
    (Id, ID),
    (OptionalId, OPTIONAL_ID),
    (OrderId, ORDER_ID),
    (CaseId, {"type": "string", "format": "uuid"}),
    (Money, MONEY),
    (When, TIME),
    (Flag, {"type": "boolean"}),
    (Evidence, EVIDENCE),
]
REASON = {
    "type": "string",
    "maxLength": MAX_REASON_CHARS,
    "pattern": rf"^({'|'.join(g.value for g in ReasonGroup)})\.[a-z0-9_]+$",
}
# A unit price: more than 0 (a free gift's line, SKU:QTY:0.00:gift:LIST_PRICE, is taken too).
PRICE = r"([1-9][0-9]{0,8}(\.[0-9]{1,2})?|0\.([1-9][0-9]?|0[1-9]))"
ORDER_LINE = {
    "oneOf": [
        {
            "type": "string",
            "description": "SKU:QTY:UNIT_PRICE[:CATEGORY[:LIST_PRICE]]",
            "pattern": rf"^[A-Za-z0-9][A-Za-z0-9_.\-/]{{0,63}}:[1-9][0-9]{{0,4}}:{PRICE}"
            r"(:[A-Za-z0-9_.\-]{0,64}(:[0-9]{1,9}(\.[0-9]{1,2})?)?)?$",
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["sku", "quantity", "unit_price"],
            "properties": {
                "sku": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,63}$"},
                "quantity": {"type": "integer", "minimum": 1, "maximum": 99_999},
                "unit_price": {**MONEY, "pattern": f"^{PRICE}$"},
                "category": {"type": "string", "pattern": r"^[A-Za-z0-9_.\-]{1,64}$"},
                "list_price": MONEY,
            },
        },
    ]
}
CASE_LINE = {
    "type": "string",
    "description": "SKU[:QTY]: the whole line, or so many of it.",
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,63}(:[1-9][0-9]{0,4})?$",
}
# A shop's own id for a setting (an address, a rule) or a category a rule names.
SETTING_ID = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"}
RULE_TYPES = {
    "type": "array",
    "minItems": 1,
    "maxItems": 3,
    "uniqueItems": True,
    "items": {"type": "string", "enum": [t.value for t in CaseType]},
    "description": "A reship is never a rule's (the policy's bounds say which are).",
}
RULE_REASONS = {
    "type": "array",
    "maxItems": 50,
    "items": {"type": "string", "pattern": r"^[a-z_]{1,40}(\.[a-z_]{1,60})?$"},
}
SPECIAL: Mapping[tuple[type[Command], str], dict[str, Any]] = {
    (SetReturnAddress, "address_id"): SETTING_ID,
    (RemoveReturnAddress, "address_id"): SETTING_ID,
    (SetAutoRule, "rule_id"): SETTING_ID,
    (RemoveAutoRule, "rule_id"): SETTING_ID,
    (SetAutoRule, "types"): RULE_TYPES,
    (SetAutoRule, "reasons"): RULE_REASONS,
    (SetAutoRule, "categories"): {"type": "array", "maxItems": 50, "items": SETTING_ID},
    # Staff queues: a member's id, the reasons and SKUs they take by rule.
    (AddStaff, "member"): SETTING_ID,
    (RemoveStaff, "member"): SETTING_ID,
    (AssignCase, "member"): SETTING_ID,
    (AddStaff, "reasons"): RULE_REASONS,
    (AddStaff, "skus"): {"type": "array", "maxItems": 50, "items": SETTING_ID},
    (OpenCase, "reason"): REASON,
    (OpenCase, "case_id"): {"type": "string", "format": "uuid"},
    (OpenCase, "line"): {"type": "array", "maxItems": MAX_ORDER_LINES, "items": CASE_LINE},
    (PlaceOrder, "line"): {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_ORDER_LINES,
        "items": ORDER_LINE,
    },
}


def field_schema(kind: type[Command], name: str, key: str) -> dict[str, Any] | None:
    """The JSON schema of one of a command's fields as a body gives it, with its limits; None
    where the model's own schema says it already."""
    if (kind, key) in SPECIAL:
        return dict(SPECIAL[(kind, key)])
    field = kind.model_fields[name]
    words = field_choices(field)
    if words is not None:
        return {"type": "string", "enum": words}
    for meta in field.metadata:
        for alias, schema in FIELD_SCHEMAS:
            if meta in get_args(alias)[1:]:
                return dict(schema)
        func = getattr(meta, "func", None)
        bounds = inspect.getclosurevars(func).nonlocals if func is not None else {}
        if "low" in bounds and "high" in bounds:
            return {"type": "integer", "minimum": bounds["low"], "maximum": bounds["high"]}
    return None


def with_limits(kind: type[Command], schema: dict[str, Any]) -> dict[str, Any]:
    """A command's request-body schema with every field's limits (``field_schema``)."""
    by_key = {key: name for name in kind.model_fields for key in _keys(kind, name)}
    properties: dict[str, Any] = {}
    for key, given in schema.get("properties", {}).items():
        found = field_schema(kind, by_key.get(key, key), key)
        if found is None:
            properties[key] = given
            continue
        described = {k: given[k] for k in ("description", "title", "default") if k in given}
        if "description" in found and "description" in given:
            described["description"] = f"{given['description']} {found.pop('description')}"
        if key not in schema.get("required", []):  # null is the same as not given
            found = {"anyOf": [found, {"type": "null"}]}
        properties[key] = {**found, **described}
    return {**schema, "properties": properties}


def _keys(kind: type[Command], name: str) -> list[str]:
    field = kind.model_fields[name]
    alias = field.validation_alias
    choices = getattr(alias, "choices", None) or ([alias] if isinstance(alias, str) else [])
    return [name, *(c for c in choices if isinstance(c, str))]


# Query parameters of `GET /v1/cases`, as `case list` takes them.
AS_OF_QUERY: dict[str, Any] = {
    "name": "at",
    "in": "query",
    "description": "Show it as of this time (default: now): the deadlines due by then as taken.",
    "schema": QUERY_TIME,
}
LIST_CASES_QUERY: list[dict[str, Any]] = [
    {"name": "merchant", "in": "query", "schema": OPTIONAL_ID},
    {"name": "buyer", "in": "query", "schema": OPTIONAL_ID},
    {"name": "order", "in": "query", "schema": ORDER_ID},
    {
        "name": "status",
        "in": "query",
        "schema": {"type": "string", "enum": [s.value for s in Status]},
    },
    {"name": "due_before", "in": "query", "schema": QUERY_TIME},
    {
        "name": "at",
        "in": "query",
        "description": "Show the cases as of this time (default: now).",
        "schema": QUERY_TIME,
    },
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT},
    },
    {
        "name": "search",
        "in": "query",
        "description": "A case id's start (4 characters or more), an order id or a buyer id.",
        "schema": OPTIONAL_ID,
    },
    {
        "name": "reason",
        "in": "query",
        "description": "A reason code, or its group: quality matches quality.*.",
        "schema": OPTIONAL_ID,
    },
    {
        "name": "open",
        "in": "query",
        "description": "true: only cases still open (in no final status).",
        "schema": {"type": "boolean"},
    },
    {
        "name": "sort",
        "in": "query",
        "description": "opened: oldest first; due: soonest deadline first, those without one last.",
        "schema": {"type": "string", "enum": [o.value for o in CaseOrder]},
    },
    {
        "name": "after",
        "in": "query",
        "description": "The last case of the previous page: the page after it, in the same order.",
        "schema": {"type": "string", "format": "uuid"},
    },
    # Staff queues
    {
        "name": "assignee",
        "in": "query",
        "description": "Only cases assigned to this member of the shop's staff.",
        "schema": OPTIONAL_ID,
    },
]
assert {p["name"] for p in LIST_CASES_QUERY} == set(ListCases.model_fields)
