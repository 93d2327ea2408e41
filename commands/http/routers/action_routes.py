"""The actions, one route each, derived from the typed commands
(``engine/application/requests.py``): every case action is ``POST /v1/cases/{case_id}/{its last
word}``, every order fact ``POST /v1/orders/{order_id}/...``; a body is parsed by the command's own
model (``Command.parse``), so it is refused exactly as a `batch` line or an option would be, with
the same message, and the OpenAPI document shows each command's model as its request schema."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request

from aftersales.commands.http.batcher import Prepared
from aftersales.commands.http.dependencies import ApiDep, answer
from aftersales.commands.http.error_responses import refused
from aftersales.commands.http.guards import allow, refuse_unseen
from aftersales.commands.http.openapi_models import (
    IDEMPOTENCY_KEY,
    IF_MATCH,
    MERCHANT_ID,
    AssignmentView,
    BuyerView,
    CaseView,
    OrderView,
    ShopView,
    responses,
    with_limits,
)
from aftersales.commands.http.request_parts import expected_version, json_body
from aftersales.engine.access.actor_checks import parties
from aftersales.engine.access.api_keys import Forbidden
from aftersales.engine.access.scopes import PARTY, Principal, Scope
from aftersales.engine.application.fields import key_of
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    COMMANDS,
    Action,
    BuyerAction,
    CaseAction,
    Command,
    FireDeadline,
    MessageCase,
    OpenCase,
    OrderAction,
    PlaceOrder,
    QueueAction,
    ShopAction,
)
from aftersales.engine.domain.errors import BadInput

# Commands that make what their route is about: POSTed to the collection.
CREATES: Mapping[type[Command], str] = {PlaceOrder: "/v1/orders", OpenCase: "/v1/cases"}
# An idempotency key as the document says it (IDEMPOTENCY_KEY's pattern and length).
_IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,200}")
# Fields that come from the path or headers, or are the principal's, never from a body.
NOT_IN_BODY = ("by", "command_id", "expected_version")


def action_route(kind: type[Command]) -> str | None:
    """The path an action is POSTed to; None for what is not an HTTP action (the clock's)."""
    if kind in CREATES:
        return CREATES[kind]
    word = kind.name.split(" ")[-1]
    if issubclass(kind, OrderAction):
        return f"/v1/orders/{{order_id}}/{word}"
    if issubclass(kind, CaseAction) and kind is not FireDeadline:
        return f"/v1/cases/{{case_id}}/{word}"
    if issubclass(kind, ShopAction):
        return f"/v1/shops/{{merchant_id}}/{word}"
    if issubclass(kind, BuyerAction):
        return f"/v1/buyers/{{buyer_id}}/{word}"
    return None


def body_schema(kind: type[Command], components: dict[str, Any]) -> dict[str, Any]:
    """The command's model as a request body's JSON schema (its definitions shared)."""
    schema = kind.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    leave_out = {*NOT_IN_BODY, *(key_of(a) for a in kind.arguments if kind not in CREATES)}
    schema["properties"] = {
        k: v for k, v in schema.get("properties", {}).items() if k not in leave_out
    }
    schema["required"] = [k for k in schema.get("required", []) if k not in leave_out]
    schema["title"] = kind.__name__
    return with_limits(kind, schema)


def build_action(
    principal: Principal,
    kind: type[Command],
    body: Mapping[str, Any],
    path: Mapping[str, str],
    idempotency_key: str | None,
    version: int | None,
) -> Command:
    """The command a request asks for: the body's options, the path's id, the headers'
    idempotency key and version, and the principal as the one acting."""
    for key in NOT_IN_BODY:
        if key in body:
            raise BadInput(
                f"{key} is not given in the body over HTTP (the actor is the key's principal; "
                "use the Idempotency-Key and If-Match headers)"
            )
    for name in path:
        if name in body:
            raise BadInput(f"{name} is given in the path, not in the body")
    if body.get("at") is not None and principal.scope is not Scope.ALL:
        raise Forbidden("only the platform's principals may say when an action happened (at)")
    values: dict[str, Any] = {**body, **path, "by": principal.principal_id}
    if kind is MessageCase and principal.role in PARTY and not ({"as", "party"} & set(body)):
        values["as"] = PARTY[principal.role].value
    if idempotency_key is not None:
        if not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise BadInput("Idempotency-Key must be 1 to 200 visible ASCII characters (no spaces)")
        # Each principal's keys are its own: another's cannot be replayed or probed.
        values["command_id"] = f"{principal.principal_id}/{idempotency_key}"
    if version is not None:
        values["expected_version"] = version
    command: Command = kind.parse(values)
    return command


def add_action(router: APIRouter, kind: type[Command], path: str) -> None:
    """The route for one action: its body parsed by the command's model, the path's ids, the
    Idempotency-Key and If-Match headers, and the principal as the one acting."""
    path_names = [a for a in kind.arguments if f"{{{a}}}" in path]

    async def endpoint(request: Request, api: ApiDep) -> Any:
        try:
            body = await json_body(request)
            version = expected_version(request)
        except BadInput as exc:
            return refused(request, exc, api.limiter)
        given = {n: request.path_params[n] for n in path_names}
        idempotency_key = request.headers.get("idempotency-key")

        def work(engine: Engine, principal: Principal) -> Prepared:
            allow(principal, kind.name)
            command = build_action(principal, kind, body, given, idempotency_key, version)
            assert isinstance(command, Action)
            found = parties(engine, command)
            if kind is not PlaceOrder:  # placing: operators only, nothing to find
                # What the path names (a case, an order, a shop), else the order opened on.
                named = [
                    (n.removesuffix("_id").replace("merchant", "shop"), v) for n, v in given.items()
                ]
                what, target = named[0] if named else ("order", getattr(command, "order_id", ""))
                refuse_unseen(principal, found, f"{what} {target}")
            if found is not None and not principal.speaks_for(command.role):
                raise Forbidden(
                    f"the {principal.role.value} role may not act as the {command.role}"
                )
            return Prepared(command, lambda result, replayed: (result, not replayed))

        return await answer(api, request, work, created=kind in CREATES, action=True)

    doc = (kind.__doc__ or "").strip()
    view = next((v for base, v in VIEWS if issubclass(kind, base)), CaseView)
    body = body_schema(kind, BODY_SCHEMAS)
    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        name=kind.name,
        summary=doc.split("\n")[0],
        description=f"`{kind.name}` over HTTP. {doc}",
        tags=[path.split("/")[2]],
        status_code=201 if kind in CREATES else 200,
        response_model=None,
        responses=responses(
            view,
            *(404, 409, 412, 413, 422),
            status=201 if kind in CREATES else 200,
            headers=["ETag"],
            created=kind in CREATES,
        ),
        openapi_extra={
            "parameters": [
                {"name": n, "in": "path", "required": True, "schema": PATH_IDS[n]}
                for n in path_names
            ]
            + [IDEMPOTENCY_KEY, IF_MATCH],
            "requestBody": {
                "required": bool(body["required"]),
                "description": "The command's options as a JSON object (no body, or {}, when "
                "it needs none); at most 64 KiB, nested at most 8 deep.",
                "content": {"application/json": {"schema": body}},
            },
        },
    )


# What each kind of action answers with (a case's view otherwise).
VIEWS: tuple[tuple[type[Command], type[Any]], ...] = (
    (OrderAction, OrderView),
    (ShopAction, ShopView),
    (QueueAction, AssignmentView),  # staff queues: a case's assignment
    (BuyerAction, BuyerView),
)
# The ids a path names: a case's UUID, an order's id.
PATH_IDS: Mapping[str, dict[str, Any]] = {
    "case_id": {"type": "string", "format": "uuid"},
    "order_id": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"},
    "merchant_id": MERCHANT_ID,
    "buyer_id": MERCHANT_ID,
}
# The request bodies' shared definitions, for the OpenAPI document's components (app.py).
BODY_SCHEMAS: dict[str, Any] = {}
router = APIRouter()
for kind in COMMANDS:
    route = action_route(kind)
    if route is not None:
        add_action(router, kind, route)
