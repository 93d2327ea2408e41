"""The API's checks on a principal, before anything is read for it (the desk's pages use them
too): the role's rights, the reach of its scope."""

from __future__ import annotations

from aftersales.engine.access.api_keys import Forbidden
from aftersales.engine.access.scopes import Principal, Scope
from aftersales.engine.domain.errors import NotFound


def refuse_unseen(principal: Principal, found: tuple[str, str] | None, what: str) -> None:
    """Not found, whether it is not there or the principal may not read it: ids do not leak."""
    if found is None or not principal.sees(*found):
        raise NotFound(f"no {what}")


def allow(principal: Principal, name: str) -> None:
    if not principal.may(name):
        raise Forbidden(f"the {principal.role.value} role may not {name}")


def report_merchant(principal: Principal, merchant: str | None) -> str | None:
    """A merchant's staff sees its own merchant's figures only."""
    if principal.scope is Scope.MERCHANT:
        if merchant not in (None, principal.merchant_id):
            raise Forbidden(f"a merchant's staff sees only {principal.merchant_id}'s reports")
        return principal.merchant_id
    return merchant
