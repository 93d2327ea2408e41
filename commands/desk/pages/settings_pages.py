"""A shop's settings on the desk (设置): its return addresses and the rules that approve
requests for it, with the platform's bounds beside the rule form and each change's history.

The forms post to the desk itself (``POST /desk/settings/{action}``, a plain HTML form, no
script needed), and each is the engine's typed command (``shop set-address`` ...), built as the
API builds it (``build_action``: the principal as the one acting, the form's hidden version as
If-Match, its hidden key as the Idempotency-Key) and run through the API's own ``Api.run``, so it
is refused or accepted by the same code. Against cross-site requests, a post counts only from
the desk's own pages (``session.same_origin``, besides the cookie's SameSite=Strict). A refusal
is shown on the page as it stands now, in the engine's words, with the form as it was sent;
nothing is changed. A success goes back to the page (303), where the change is listed."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from aftersales.commands.desk import shop_views, views
from aftersales.commands.desk.page_reads import DisplayZone, Work, held_back, read, work_with
from aftersales.commands.desk.rendering import HEADERS, render, signed_out
from aftersales.commands.desk.session import same_origin
from aftersales.commands.http.batcher import Prepared
from aftersales.commands.http.dependencies import ApiDep
from aftersales.commands.http.error_responses import status_of
from aftersales.commands.http.guards import allow, refuse_unseen
from aftersales.commands.http.rate_limits import who
from aftersales.commands.http.request_parts import bearer
from aftersales.commands.http.routers.action_routes import build_action
from aftersales.engine.access.api_keys import Forbidden, Unauthenticated
from aftersales.engine.access.scopes import Principal, Scope
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    Action,
    RemoveAutoRule,
    RemoveReturnAddress,
    SetAutoRule,
    SetReturnAddress,
    ShopAction,
    ShowShop,
)
from aftersales.engine.domain.errors import AftersalesError, BadInput, Conflict
from aftersales.engine.domain.values import CaseType, Role

MAX_FORM = 16 * 1024
# The last changes listed on the page (newest first); the audit of the shop has them all.
HISTORY_SHOWN = 50
ACTIONS: dict[str, type[ShopAction]] = {
    k.name.split(" ")[-1]: k
    for k in (SetReturnAddress, RemoveReturnAddress, SetAutoRule, RemoveAutoRule)
}
# What staff tried, in their words, and what they read once it is done.
TRIED = {
    "set-address": "change to the return address",
    "remove-address": "removal of the return address",
    "set-rule": "change to the rule",
    "remove-rule": "removal of the rule",
}
DONE = {
    "set-address": "The return address is saved.",
    "remove-address": "The return address is removed.",
    "set-rule": "The rule is saved.",
    "remove-rule": "The rule is removed.",
}

router = APIRouter(include_in_schema=False)


def chosen_shop(principal: Principal, asked: str | None) -> str | None:
    """Whose settings the page shows: a merchant's staff their own shop (another is "no
    shop", as the API answers), the operator the one it picks (None: none picked yet)."""
    asked = (asked or "").strip() or None
    if principal.scope is Scope.MERCHANT:
        shop = asked or principal.merchant_id or ""
        refuse_unseen(principal, (shop, ""), f"shop {shop}")
        return shop
    return asked


def settings_work(
    asked: str | None,
    query: dict[str, str],
    refused: str | None = None,
    tried: str = "",
    sent: dict[str, Any] | None = None,
) -> Work:
    def work(engine: Engine, principal: Principal) -> dict[str, Any]:
        allow(principal, ShowShop.name)
        shop = chosen_shop(principal, asked)
        data: dict[str, Any] = {
            "shop": shop,
            "picks": principal.scope is Scope.ALL,  # the operator chooses the shop
            "shops": views.merchants(engine.store) if principal.scope is Scope.ALL else [],
            "refused": refused,
            "done": DONE.get(query.get("done", "")) if refused is None else None,
            "tried": tried,
            "sent": sent or {},
        }
        if shop is None:
            return data
        settings = engine.handle(ShowShop.parse({"merchant_id": shop}))
        history = shop_views.shop_history(engine.store, shop)
        # A form opened to change one setting (?address=ID, ?rule=ID) starts from it.
        editing = {
            "set-address": next(
                (
                    a
                    for a in settings["return_addresses"]
                    if a["address_id"] == query.get("address")
                ),
                None,
            ),
            "set-rule": next(
                (r for r in settings["rules"] if r["rule_id"] == query.get("rule")), None
            ),
        }
        may = {
            word: principal.may(kind.name) and principal.speaks_for(Role.MERCHANT)
            for word, kind in ACTIONS.items()
        }
        bounds = engine.policy.shop_rules
        return {
            **data,
            "settings": settings,
            "history": history[::-1][:HISTORY_SHOWN],
            "history_count": len(history),
            "last": shop_views.last_changes(history),
            "bounds": shop_views.bounds(bounds),
            "case_types": [
                (t.value, shop_views.type_words(t.value), t in bounds.types) for t in CaseType
            ],
            "type_words": shop_views.type_words,
            "editing": editing,
            "may": may,
            # Each form's Idempotency-Key, fixed when the page is drawn: posted twice, it acts once.
            "new_key": lambda: str(uuid.uuid4()),
        }

    return work


@router.get("/desk/settings")
async def settings_page(request: Request, api: ApiDep, display: DisplayZone) -> Any:
    query = dict(request.query_params)
    work = settings_work(query.get("shop"), query)
    data = await read(api, request, work_with(request, work, display))
    if isinstance(data, Response):
        return data
    return render("settings.html", **data)


def first(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0].strip()


@router.post("/desk/settings/{word}")
async def change_settings(request: Request, word: str, api: ApiDep, display: DisplayZone) -> Any:
    """A settings form: the engine's command for it, as the API would run it."""
    kind = ACTIONS.get(word)
    if kind is None:
        return render("error.html", 404, message=f"no settings form {word[:40]!r}")
    if not same_origin(request):
        return render("error.html", 403, message="change settings from this site's own page")
    if bearer(request) is None:
        return signed_out()
    limited = held_back(api, request)
    if limited is not None:
        return limited
    raw = await request.body()
    if len(raw) > MAX_FORM:
        return render("error.html", 413, message=f"a settings form is at most {MAX_FORM} bytes")
    form = parse_qs(raw.decode("utf-8", "replace"))
    shop, version, key = first(form, "shop"), first(form, "version"), first(form, "key")
    values = shop_views.form_values(kind, form)

    def work(engine: Engine, principal: Principal) -> Prepared:
        allow(principal, kind.name)
        refuse_unseen(principal, (shop, ""), f"shop {shop}")
        if version and not version.isdigit():
            raise BadInput(f"version {version[:20]!r} is not a whole number")
        expected = int(version) if version else None
        path = {"merchant_id": shop}
        command = build_action(principal, kind, values, path, key or None, expected)
        assert isinstance(command, Action)
        if not principal.speaks_for(command.role):
            raise Forbidden(f"the {principal.role.value} role may not act as the {command.role}")
        return Prepared(command, lambda result, replayed: (result, not replayed))

    try:
        await api.run(request, work, action=True)
    except Unauthenticated:
        api.limiter.failed(*who(request))
        return signed_out()
    except AftersalesError as exc:
        status = status_of(exc.code)
        if status in (401, 403, 404):
            api.limiter.failed(*who(request))
            return render("error.html", status, message=exc.message)
        # Refused by the engine: the settings as they stand now, the refusal in the staff's
        # words above them, the form as it was sent; nothing changed.
        if isinstance(exc, Conflict):
            words = (
                "These settings changed since you opened them (someone else saved a change): "
                f"your {TRIED[word]} was not taken; below are the settings as they stand now."
            )
        else:
            words = f"Not changed: {exc.message}"
        again = settings_work(shop, {}, refused=words, tried=word, sent=values)
        data = await read(api, request, work_with(request, again, display))
        if isinstance(data, Response):
            return data
        return render("settings.html", status, **data)
    where = urlencode({"shop": shop, "done": word})
    return RedirectResponse(f"/desk/settings?{where}", status_code=303, headers=HEADERS)
