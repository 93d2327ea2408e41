"""What the settings page shows of a shop, besides the settings themselves (``ShowShop``): each
change as people read it (the shop's events: who, when, what), the platform's bounds on rules,
and a form's fields as the typed command takes them. Plain data, no HTML; who may see which
shop is decided by the caller (``commands/desk/pages/settings_pages.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aftersales.commands.desk.views import fields_of
from aftersales.engine.application.requests import Command
from aftersales.engine.domain.events import Event
from aftersales.engine.domain.policy import ShopRuleBounds
from aftersales.engine.domain.shop import (
    AutoRule,
    AutoRuleRemoved,
    AutoRuleSet,
    ReturnAddressRemoved,
    ReturnAddressSet,
    ShopOpened,
    shop_uuid,
)
from aftersales.engine.domain.values import CaseType, money_str
from aftersales.engine.storage.store import AftersalesStore

# The service types as staff read them (the value is what the command takes).
TYPE_WORDS: Mapping[str, str] = {
    CaseType.REFUND_ONLY.value: "refund only (仅退款)",
    CaseType.RETURN_REFUND.value: "return and refund (退货退款)",
    CaseType.EXCHANGE.value: "exchange (换货)",
    CaseType.RESHIP.value: "reship (补发)",
}


@dataclass(frozen=True)
class Change:
    """One change to a shop's settings: what it was, on which setting, who made it, when."""

    version: int
    at: datetime
    role: str
    by: str
    what: str
    setting: str  # "address:ID", "rule:ID", or "" for the shop's opening


def type_words(value: str) -> str:
    return TYPE_WORDS.get(value, value.replace("_", " "))


def describe_rule(rule: AutoRule) -> str:
    """A rule's conditions in a line: ``refund only (仅退款), up to 20.00, reasons quality``."""
    parts = [", ".join(type_words(t.value) for t in rule.types)]
    parts.append(f"up to {money_str(rule.up_to)}" if rule.up_to is not None else "up to the bound")
    if rule.reasons:
        parts.append("reasons " + ", ".join(rule.reasons))
    if rule.categories:
        parts.append("categories " + ", ".join(rule.categories))
    return "; ".join(parts)


def shop_history(store: AftersalesStore, merchant_id: str) -> list[Change]:
    """Every change to the shop's settings, oldest first, read from its events."""
    found = []
    for stored in store.recorder.select_events(shop_uuid(merchant_id)):
        event = store.mapper.to_domain_event(stored)
        if not isinstance(event, Event):  # every stored event is one; a type checker asks
            continue
        if isinstance(event, ShopOpened):
            what, setting = "began keeping the shop's settings", ""
        elif isinstance(event, ReturnAddressSet):
            a = event.return_address
            what = f"set return address {a.address_id}: {a.text()}"
            what += ", made the default" if event.default else ""
            setting = f"address:{a.address_id}"
        elif isinstance(event, ReturnAddressRemoved):
            what = f"removed return address {event.address_id}"
            setting = f"address:{event.address_id}"
        elif isinstance(event, AutoRuleSet):
            rule = event.rule
            what = f"set rule {rule.rule_id}, version {rule.version}: {describe_rule(rule)}"
            setting = f"rule:{rule.rule_id}"
        elif isinstance(event, AutoRuleRemoved):
            what, setting = f"removed rule {event.rule_id}", f"rule:{event.rule_id}"
        else:  # an event this desk does not know yet: named, not hidden
            what, setting = type(event).__name__, ""
        found.append(
            Change(
                version=event.originator_version,
                at=event.at,
                role=event.actor.role.value,
                by=event.actor.id,
                what=what,
                setting=setting,
            )
        )
    return found


def last_changes(history: Sequence[Change]) -> dict[str, Change]:
    """Each setting's last change (by ``Change.setting``)."""
    return {c.setting: c for c in history if c.setting}


def bounds(rules: ShopRuleBounds) -> dict[str, Any]:
    """The platform's bounds on the rules a shop may set, to show beside the rule form."""
    return {
        "types": [t.value for t in rules.types],
        "refund_only_up_to": money_str(rules.refund_only_up_to),
        "return_up_to": money_str(rules.return_up_to),
    }


def form_values(kind: type[Command], form: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """A posted form's values for the command's own fields (those a person types): a flag is
    given when its box is ticked, a list as the boxes ticked or words separated by commas; a
    field left empty is not given. The command's own parsing checks them (``Command.parse``)."""
    values: dict[str, Any] = {}
    for field in fields_of(kind):
        if field.name == "merchant_id":  # the shop is the form's, not a field typed
            continue
        given = [v.strip() for v in form.get(field.name, ()) if v.strip()]
        if field.flag:
            if given:
                values[field.name] = True
        elif field.many:
            if given:
                values[field.name] = given
        elif given:
            values[field.name] = given[0]
    return values
