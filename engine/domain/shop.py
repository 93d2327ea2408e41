"""The `Shop` aggregate: a merchant's own after-sales settings, every change an event, so each
setting has a history an audit can show.

- **Return addresses**: several (one per warehouse, say), one of them the default. A return
  approved by the clock, by a rule, or by staff who name no address is sent to the default.
- **Rules that act for the shop** (自动同意): approve a request that matches (its service type, at
  or under an amount, for given reasons or categories) the moment it is opened, within the bounds
  the platform's policy sets (``Policy.shop_rules``). An approval by a rule is recorded as the
  rule's, naming the rule and its version.
- **Staff** (engine/domain/assignment.py assigns cases to them): the shop's roster, each member
  with the cases they take by rule (reasons, up to an amount, SKUs), and how a new case is
  assigned (``round_robin`` or ``by_rule``).
"""

import re
from collections.abc import Iterable
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid5

from pydantic import BaseModel, ConfigDict

from aftersales.engine.domain.errors import BadInput, NotAllowed
from aftersales.engine.domain.events import Act, Aggregate, Created, Event
from aftersales.engine.domain.limits import MAX_TEXT_CHARS
from aftersales.engine.domain.values import CaseType, money_str

if TYPE_CHECKING:
    from aftersales.engine.domain.policy import Policy

SHOP_NAMESPACE = UUID("3d8e2b71-5c4a-4f09-9e6d-7a1b2c3d4e5f")
_SETTING_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# A reason a rule names: a reason code ("quality.colour_difference") or its group ("quality").
_REASON = re.compile(r"^[a-z_]{1,40}(\.[a-z_]{1,60})?$")
MAX_ADDRESSES = 20
MAX_RULES = 20
MAX_STAFF = 200


def shop_uuid(merchant_id: str) -> UUID:
    """A shop's stored aggregate id, derived from the merchant's id."""
    return uuid5(SHOP_NAMESPACE, f"shop:{merchant_id}")


def _setting_id(value: str, what: str) -> str:
    if not _SETTING_ID.fullmatch(value):
        shown = value if len(value) <= 70 else value[:70] + "..."
        raise BadInput(f"{what} {shown!r} must be 1 to 64 letters, digits, '-', '_' or '.' (ASCII)")
    return value


class ReturnAddress(BaseModel):
    """Where returned goods go: a warehouse's address, named by the shop's own id for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address_id: str
    warehouse: str
    address: str

    def text(self) -> str:
        """The address as a case records it (the warehouse first)."""
        return f"{self.warehouse}: {self.address}"


class AutoRule(BaseModel):
    """A rule that approves, for the shop, the requests it matches: every condition given must
    hold (a reason matches itself or its group; every line of the case in a category given)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule_id: str
    version: int
    types: tuple[CaseType, ...]
    up_to: Decimal | None = None
    reasons: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    def matches(
        self, case_type: CaseType, reason: str, amount: Decimal, categories: Iterable[str]
    ) -> bool:
        if case_type not in self.types:
            return False
        if self.up_to is not None and amount > self.up_to:
            return False
        if self.reasons and not any(
            reason == r or reason.startswith(f"{r}.") for r in self.reasons
        ):
            return False
        return not self.categories or all(c in self.categories for c in categories)

    @property
    def named(self) -> str:
        """The rule and its version, as an approval records them."""
        return f"{self.rule_id}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "version": self.version,
            "types": [t.value for t in self.types],
            "up_to": money_str(self.up_to) if self.up_to is not None else None,
            "reasons": list(self.reasons),
            "categories": list(self.categories),
        }


class ShopEvent(Event):
    pass


class ShopOpened(ShopEvent, Created):
    merchant_id: str


class ReturnAddressSet(ShopEvent):
    return_address: ReturnAddress
    default: bool


class ReturnAddressRemoved(ShopEvent):
    address_id: str


class AutoRuleSet(ShopEvent):
    rule: AutoRule


class AutoRuleRemoved(ShopEvent):
    rule_id: str


# Staff: the shop's roster and how new cases are assigned -------------------------------------


class AssignMode(StrEnum):
    """How a new case is assigned to one of the shop's staff (engine/domain/assignment.py)."""

    ROUND_ROBIN = "round_robin"
    BY_RULE = "by_rule"


class StaffMember(BaseModel):
    """One of the shop's staff, and the cases they take when cases are assigned by rule: every
    condition given must hold (a reason matches itself or its group; some line of the case is
    one of the SKUs); a member with none takes any case."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    member_id: str
    reasons: tuple[str, ...] = ()
    up_to: Decimal | None = None
    skus: tuple[str, ...] = ()

    def matches(self, reason: str, amount: Decimal, skus: Iterable[str]) -> bool:
        if self.up_to is not None and amount > self.up_to:
            return False
        if self.reasons and not any(
            reason == r or reason.startswith(f"{r}.") for r in self.reasons
        ):
            return False
        return not self.skus or any(s in self.skus for s in skus)

    def to_json(self) -> dict[str, Any]:
        return {
            "member_id": self.member_id,
            "reasons": list(self.reasons),
            "up_to": money_str(self.up_to) if self.up_to is not None else None,
            "skus": list(self.skus),
        }


class StaffAdded(ShopEvent):
    member: StaffMember


class StaffRemoved(ShopEvent):
    member_id: str


class AssignModeSet(ShopEvent):
    mode: AssignMode


class Shop(Aggregate):
    """One merchant's settings: its return addresses and the rules that act for it."""

    if TYPE_CHECKING:
        merchant_id: str
        addresses: dict[str, ReturnAddress]
        default_id: str | None
        rules: dict[str, AutoRule]
        versions: dict[str, int]
        staff: dict[str, StaffMember]
        assign_mode: AssignMode

    @classmethod
    def open(cls, merchant_id: str, act: Act) -> "Shop":
        if not merchant_id.strip():
            raise BadInput("a shop needs its merchant's id")
        return cls._create_sealed(
            ShopOpened, id=shop_uuid(merchant_id), merchant_id=merchant_id, **act.fields()
        )

    def when(self, event: Event) -> None:
        super().when(event)
        if isinstance(event, ShopOpened):
            self.merchant_id = event.merchant_id
            self.addresses, self.default_id = {}, None
            self.rules, self.versions = {}, {}
        elif isinstance(event, ReturnAddressSet):
            kept = event.return_address
            self.addresses[kept.address_id] = kept
            if event.default or self.default_id is None:
                self.default_id = kept.address_id
        elif isinstance(event, ReturnAddressRemoved):
            del self.addresses[event.address_id]
            if self.default_id == event.address_id:
                self.default_id = None
        elif isinstance(event, AutoRuleSet):
            self.rules[event.rule.rule_id] = event.rule
            self.versions[event.rule.rule_id] = event.rule.version
        elif isinstance(event, AutoRuleRemoved):
            del self.rules[event.rule_id]
        else:
            self._staff_when(event)

    # Return addresses ----------------------------------------------------------------------------

    def set_address(
        self, act: Act, *, address_id: str, warehouse: str, address: str, default: bool
    ) -> None:
        """Add or change a return address (the first one is the default; ``default`` makes
        this one the default)."""
        _setting_id(address_id, "address id")
        for what, text in (("warehouse", warehouse), ("address", address)):
            if not text.strip():
                raise BadInput(f"a return address needs its {what}")
            if len(text) > MAX_TEXT_CHARS:
                raise BadInput(f"the {what} is longer than {MAX_TEXT_CHARS} characters")
        if address_id not in self.addresses and len(self.addresses) >= MAX_ADDRESSES:
            raise NotAllowed(f"shop {self.merchant_id} has {MAX_ADDRESSES} return addresses")
        kept = ReturnAddress(
            address_id=address_id, warehouse=warehouse.strip(), address=address.strip()
        )
        self.trigger_event(ReturnAddressSet, return_address=kept, default=default, **act.fields())

    def remove_address(self, act: Act, *, address_id: str) -> None:
        """Remove a return address; the default only when it is the last one (choose another
        default first), so a shop with addresses always has a default."""
        if address_id not in self.addresses:
            raise NotAllowed(f"shop {self.merchant_id} has no return address {address_id!r}")
        if address_id == self.default_id and len(self.addresses) > 1:
            raise NotAllowed(
                f"{address_id} is shop {self.merchant_id}'s default return address: make "
                "another the default first"
            )
        self.trigger_event(ReturnAddressRemoved, address_id=address_id, **act.fields())

    @property
    def default_address(self) -> ReturnAddress | None:
        return self.addresses.get(self.default_id) if self.default_id else None

    # Rules ---------------------------------------------------------------------------------------

    def set_rule(
        self,
        act: Act,
        policy: "Policy",
        *,
        rule_id: str,
        types: tuple[CaseType, ...],
        up_to: Decimal | None,
        reasons: tuple[str, ...],
        categories: tuple[str, ...],
    ) -> None:
        """Add a rule, or change one (a new version of it), within the policy's bounds."""
        _setting_id(rule_id, "rule id")
        if rule_id not in self.rules and len(self.rules) >= MAX_RULES:
            raise NotAllowed(f"shop {self.merchant_id} has {MAX_RULES} rules")
        if not types:
            raise BadInput("a rule needs the service types it approves (--type)")
        for reason in reasons:
            if not _REASON.fullmatch(reason):
                raise BadInput(f"reason {reason!r} is not a reason code or group")
        for category in categories:
            _setting_id(category, "category")
        policy.shop_rules.check(types, up_to)
        rule = AutoRule(
            rule_id=rule_id,
            version=self.versions.get(rule_id, 0) + 1,
            types=tuple(dict.fromkeys(types)),
            up_to=up_to,
            reasons=tuple(dict.fromkeys(reasons)),
            categories=tuple(dict.fromkeys(categories)),
        )
        self.trigger_event(AutoRuleSet, rule=rule, **act.fields())

    def remove_rule(self, act: Act, *, rule_id: str) -> None:
        if rule_id not in self.rules:
            raise NotAllowed(f"shop {self.merchant_id} has no rule {rule_id!r}")
        self.trigger_event(AutoRuleRemoved, rule_id=rule_id, **act.fields())

    def rule_for(
        self,
        policy: "Policy",
        case_type: CaseType,
        reason: str,
        amount: Decimal,
        categories: Iterable[str],
    ) -> AutoRule | None:
        """The first rule (by id) that approves such a request, within the policy's bounds as
        they stand now (a rule set under wider bounds acts only within today's)."""
        wanted = list(categories)
        for rule_id in sorted(self.rules):
            rule = self.rules[rule_id]
            if rule.matches(case_type, reason, amount, wanted) and policy.shop_rules.allows(
                case_type, amount
            ):
                return rule
        return None

    # Staff ---------------------------------------------------------------------------------------

    def _staff_when(self, event: Event) -> None:
        # A shop opened before there were staff has none, and assigns round robin.
        if not hasattr(self, "staff"):
            self.staff, self.assign_mode = {}, AssignMode.ROUND_ROBIN
        if isinstance(event, StaffAdded):
            self.staff[event.member.member_id] = event.member
        elif isinstance(event, StaffRemoved):
            del self.staff[event.member_id]
        elif isinstance(event, AssignModeSet):
            self.assign_mode = event.mode

    @property
    def roster(self) -> dict[str, StaffMember]:
        """The shop's staff by id (none on a shop that never had any)."""
        return getattr(self, "staff", {})

    @property
    def mode(self) -> AssignMode:
        return getattr(self, "assign_mode", AssignMode.ROUND_ROBIN)

    def add_staff(
        self,
        act: Act,
        *,
        member_id: str,
        reasons: tuple[str, ...],
        up_to: Decimal | None,
        skus: tuple[str, ...],
    ) -> None:
        """Add a member to the roster, or change what they take by rule."""
        _setting_id(member_id, "member id")
        if member_id not in self.roster and len(self.roster) >= MAX_STAFF:
            raise NotAllowed(f"shop {self.merchant_id} has {MAX_STAFF} staff")
        for reason in reasons:
            if not _REASON.fullmatch(reason):
                raise BadInput(f"reason {reason!r} is not a reason code or group")
        for sku in skus:
            _setting_id(sku, "sku")
        if up_to is not None and up_to <= 0:
            raise BadInput("up_to must be more than 0.00")
        member = StaffMember(
            member_id=member_id,
            reasons=tuple(dict.fromkeys(reasons)),
            up_to=up_to,
            skus=tuple(dict.fromkeys(skus)),
        )
        if self.roster.get(member_id) == member:
            raise NotAllowed(f"{member_id} is on shop {self.merchant_id}'s staff already, as given")
        self.trigger_event(StaffAdded, member=member, **act.fields())

    def remove_staff(self, act: Act, *, member_id: str) -> None:
        """Take a member off the roster: no new case is assigned to them (the cases they have
        stay theirs until reassigned)."""
        if member_id not in self.roster:
            raise NotAllowed(f"shop {self.merchant_id} has no staff member {member_id!r}")
        self.trigger_event(StaffRemoved, member_id=member_id, **act.fields())

    def set_assign_mode(self, act: Act, mode: AssignMode) -> None:
        if mode is self.mode:
            raise NotAllowed(f"shop {self.merchant_id} assigns {mode.value} already")
        self.trigger_event(AssignModeSet, mode=mode, **act.fields())

    def to_json(self) -> dict[str, Any]:
        return {
            "merchant_id": self.merchant_id,
            "version": self.version,
            "return_addresses": [
                {**a.model_dump(), "default": a.address_id == self.default_id}
                for a in sorted(self.addresses.values(), key=lambda a: a.address_id)
            ],
            "rules": [self.rules[r].to_json() for r in sorted(self.rules)],
            "assign_mode": self.mode.value,
            "staff": [self.roster[m].to_json() for m in sorted(self.roster)],
        }
