"""Telling the buyer: what each case event means for the buyer, in Chinese or English.

The ``notify`` projection keeps, per case, who the buyer is and the deadline running
(``proj_notify_cases``), and one row per event the buyer is told about
(``proj_notify_messages``: the kind and its facts as JSON, never the text). The text is made
when it is read, from the templates below, in the buyer's language (``notify language BUYER
zh|en``, kept in ``aftersales_notify_languages``) or else the default (``zh``, or ``--language``,
or ``$AFTERSALES_NOTIFY_LANGUAGE``):

- ``approved``: the merchant approved; where to send the goods and by when;
- ``auto_approved``: the merchant did not answer in time and the system approved;
- ``rejected``: the merchant refused, with its reason and what it said;
- ``refunded``: money returned, how much and by whom;
- ``ruled``: the platform's ruling;
- ``deadline_soon``: 24 h before a case closes by itself because the buyer has not shipped the
  goods back (worked out from the running deadline at the moment of reading, not an event).

``NotifyRelay`` publishes the messages to ``<prefix>.notify.<buyer>`` through the relay's own
machinery (a tracking record of its own, ``relay_<name>_notify``, moved after the broker's
acknowledgement; ``Nats-Msg-Id`` ``notify:<case>:<version>``). Reminders are published once their
24 h have begun, with ``Nats-Msg-Id`` ``remind:<case>:<due time>``: the stream's duplicate window
(a day) is as long as the reminder's, so a reminder sent again after a restart is dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aftersales.engine.domain.case import case_uuid
from aftersales.engine.domain.case_events import (
    CaseApproved,
    CaseAutoApproved,
    CaseEvent,
    CaseOpened,
    CaseRefunded,
    CaseRejected,
    CaseRuled,
    CaseTurnedReturn,
    ChangeOffered,
)
from aftersales.engine.domain.errors import BadInput, NotFound
from aftersales.engine.domain.values import DueAction, money_str
from aftersales.engine.storage.sql import SQLITE, parse_stored_time
from aftersales.engine.storage.store import AftersalesStore
from aftersales.projections.base import Changes, Folds, Table, View, col
from aftersales.projections.relay import Message, Relay, RelayConfig, relay_view, token
from aftersales.projections.runner import Projector

Language = Literal["zh", "en"]
LANGUAGES: tuple[Language, ...] = ("zh", "en")
DEFAULT_LANGUAGE: Language = "zh"
REMIND_BEFORE = timedelta(hours=24)
LANGUAGES_TABLE = "aftersales_notify_languages"

CASES = Table(
    "proj_notify_cases",
    (
        col("case_id", "uuid", "key", "the case"),
        col("buyer_id", "text", "keep", "who is told"),
        col("merchant_id", "text", "keep", "the shop"),
        col("order_id", "text", "keep", "the order"),
        col("status", "text", "set", "the case's status now"),
        col("due_at", "time", "set", "the running deadline, if any"),
        col("due_action", "text", "set", "what the system does then"),
    ),
    indexes=(("due_at",),),
    doc="Each case's buyer and running deadline.",
)

MESSAGES = Table(
    "proj_notify_messages",
    (
        col("case_id", "uuid", "key", "the case"),
        col("case_version", "int", "key", "the event's version in the case"),
        col("notification_id", "int", "keep", "the event's place in the log"),
        col("kind", "text", "keep", "approved, auto_approved, rejected, refunded or ruled"),
        col("at", "time", "keep", "when it happened"),
        col("facts", "text", "keep", "what the message says, as JSON"),
    ),
    indexes=(("notification_id",),),
    doc="One row per event the buyer is told about.",
)

folds = Folds()


def _message(changes: Changes, e: CaseEvent, seq: int, kind: str, **facts: Any) -> None:
    row = changes.row(MESSAGES, e.originator_id, e.originator_version)
    row.update(
        notification_id=seq,
        kind=kind,
        at=e.at,
        facts=json.dumps(facts, ensure_ascii=False, sort_keys=True),
    )


def _ship_by(e: CaseEvent) -> str | None:
    if e.due is not None and e.due.action == DueAction.AUTO_CLOSE:
        return e.due.due_at.isoformat()
    return None


def _track(e: CaseEvent, changes: Changes) -> dict[str, Any]:
    row = changes.row(CASES, e.originator_id)
    row.update(
        status=e.status.value,
        due_at=e.due.due_at if e.due else None,
        due_action=e.due.action.value if e.due else None,
    )
    return row


@folds.on(CaseOpened)
def _opened(e: CaseOpened, changes: Changes, seq: int) -> None:
    row = _track(e, changes)
    row.update(buyer_id=e.buyer_id, merchant_id=e.merchant_id, order_id=e.order_id)


@folds.on(CaseApproved)
def _approved(e: CaseApproved, changes: Changes, seq: int) -> None:
    _track(e, changes)
    _message(changes, e, seq, "approved", return_address=e.return_address, ship_by=_ship_by(e))


@folds.on(CaseAutoApproved)
def _auto_approved(e: CaseAutoApproved, changes: Changes, seq: int) -> None:
    _track(e, changes)
    _message(changes, e, seq, "auto_approved", ship_by=_ship_by(e))


@folds.on(CaseRejected)
def _rejected(e: CaseRejected, changes: Changes, seq: int) -> None:
    _track(e, changes)
    _message(changes, e, seq, "rejected", reason=e.reason, communication=e.communication)


@folds.on(CaseRefunded)
def _refunded(e: CaseRefunded, changes: Changes, seq: int) -> None:
    _track(e, changes)
    _message(changes, e, seq, "refunded", amount=money_str(e.amount), paid_by=e.paid_by.value)


@folds.on(CaseRuled)
def _ruled(e: CaseRuled, changes: Changes, seq: int) -> None:
    _track(e, changes)
    _message(changes, e, seq, "ruled", in_favour_of=e.in_favour_of.value, note=e.note)


@folds.on(ChangeOffered)
def _offered(e: ChangeOffered, changes: Changes, seq: int) -> None:
    _track(e, changes)
    amount = money_str(e.offered_amount) if e.offered_amount is not None else None
    _message(
        changes,
        e,
        seq,
        "offered",
        case_type=e.case_type.value,
        amount=amount,
        answer_by=e.due.due_at.isoformat() if e.due else None,
    )


@folds.on(CaseTurnedReturn)
def _turned(e: CaseTurnedReturn, changes: Changes, seq: int) -> None:
    _track(e, changes)
    _message(changes, e, seq, "turned_return")


def _every_other_case_event() -> list[type[CaseEvent]]:
    """The status and deadline of every other case event (the deadline reminder reads them)."""
    seen: list[type[CaseEvent]] = []
    todo: list[type[CaseEvent]] = [CaseEvent]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls is not CaseEvent and cls not in folds.table and cls not in seen:
            seen.append(cls)
    return seen


@folds.on(*_every_other_case_event())
def _other(e: CaseEvent, changes: Changes, seq: int) -> None:
    _track(e, changes)


class Notify(View):
    name = "notify"
    tables = (CASES, MESSAGES)
    folds = folds
    doc = "What the buyer is told, per case event."


# Templates -----------------------------------------------------------------------------------

_PARTY = {"zh": {"buyer": "买家", "merchant": "商家", "platform": "平台"}}

TEMPLATES: dict[str, dict[Language, str]] = {
    "approved": {
        "zh": "您的售后申请（订单 {order_id}）已通过。{ship}",
        "en": "Your after-sales request (order {order_id}) was approved. {ship}",
    },
    "auto_approved": {
        "zh": "商家未在时限内处理，您的售后申请（订单 {order_id}）已由系统自动通过。{ship}",
        "en": "The merchant did not answer in time, so your after-sales request (order "
        "{order_id}) was approved automatically. {ship}",
    },
    "rejected": {
        "zh": "商家拒绝了您的售后申请（订单 {order_id}），原因：{reason}。商家说明：{communication}"
        "。如有异议，可申请平台介入。",
        "en": "The merchant rejected your after-sales request (order {order_id}). Reason: "
        "{reason}. The merchant says: {communication}. You may ask the platform to step in.",
    },
    "refunded": {
        "zh": "退款 ¥{amount} 已退回（订单 {order_id}，由{paid_by}支付）。",
        "en": "A refund of ¥{amount} is on its way to you (order {order_id}, paid by {paid_by}).",
    },
    "ruled": {
        "zh": "平台已对订单 {order_id} 的售后纠纷作出裁决：支持{in_favour_of}。{note}",
        "en": "The platform ruled on the dispute over order {order_id}: in favour of the "
        "{in_favour_of}. {note}",
    },
    "offered": {
        "zh": "商家就您的售后申请（订单 {order_id}）提出了新方案：{case_type}{amount}。"
        "请在 {answer_by} 前接受或拒绝；逾期未答复则恢复原申请。",
        "en": "The merchant offers another settlement of your request (order {order_id}): "
        "{case_type}{amount}. Accept or decline it by {answer_by}; unanswered, your request "
        "goes on as it was.",
    },
    "turned_return": {
        "zh": "订单 {order_id} 已发货，您的仅退款申请已转为退货退款：收到商品后请寄回，或拒收。",
        "en": "Order {order_id} was shipped, so your refund-only request is now a return: send "
        "the goods back when they arrive, or refuse the delivery.",
    },
    "deadline_soon": {
        "zh": "提醒：请在 {due} 前寄回商品（订单 {order_id}），逾期售后申请将自动关闭。",
        "en": "Reminder: send the goods back by {due} (order {order_id}), or your after-sales "
        "request closes by itself.",
    },
}
_SHIP = {
    "zh": ("请将商品寄回：{address}。", "请在 {ship_by} 前寄出。"),
    "en": ("Please send the goods to: {address}.", "Please ship them by {ship_by}."),
}


def render(kind: str, facts: dict[str, Any], order_id: str, language: Language) -> str:
    """One message's text in one language."""
    values: dict[str, Any] = {k: ("" if v is None else v) for k, v in facts.items()}
    values["order_id"] = order_id
    if language == "zh":
        for key in ("paid_by", "in_favour_of"):
            if key in values:
                values[key] = _PARTY["zh"].get(values[key], values[key])
    if kind == "offered" and facts.get("amount"):
        values["amount"] = (
            f"，金额 ¥{facts['amount']}" if language == "zh" else f", ¥{facts['amount']}"
        )
    if kind in ("approved", "auto_approved"):
        address, ship_by = _SHIP[language]
        parts = []
        if facts.get("return_address"):
            parts.append(address.format(address=facts["return_address"]))
        if facts.get("ship_by"):
            parts.append(ship_by.format(ship_by=facts["ship_by"]))
        values["ship"] = " ".join(parts) if language == "en" else "".join(parts)
    return TEMPLATES[kind][language].format(**values).strip()


# Reading: languages, messages, reminders -------------------------------------------------------


def default_language() -> Language:
    """``$AFTERSALES_NOTIFY_LANGUAGE``, else Chinese."""
    return check_language(os.environ.get("AFTERSALES_NOTIFY_LANGUAGE") or DEFAULT_LANGUAGE)


def check_language(value: str) -> Language:
    for language in LANGUAGES:
        if value == language:
            return language
    raise BadInput(f"language {value!r}: one of {', '.join(LANGUAGES)}")


def _ensure_languages(store: AftersalesStore) -> None:
    store.execute(
        f"CREATE TABLE IF NOT EXISTS {{t}}{LANGUAGES_TABLE} "
        "(buyer_id text PRIMARY KEY, language text NOT NULL)"
    )


def set_language(store: AftersalesStore, buyer: str, language: str) -> None:
    chosen = check_language(language)
    if not buyer.strip():
        raise BadInput("a buyer id is needed")
    _ensure_languages(store)
    store.execute(
        f"INSERT INTO {{t}}{LANGUAGES_TABLE} (buyer_id, language) VALUES (?, ?) "
        "ON CONFLICT (buyer_id) DO UPDATE SET language = excluded.language",
        (buyer, chosen),
    )


def languages(store: AftersalesStore, buyers: Sequence[str]) -> dict[str, Language]:
    if not buyers:
        return {}
    _ensure_languages(store)
    rows = store.query(
        f"SELECT buyer_id, language FROM {{t}}{LANGUAGES_TABLE} "
        f"WHERE buyer_id IN ({SQLITE.marks(len(buyers))})",
        list(buyers),
    )
    return {r["buyer_id"]: check_language(r["language"]) for r in rows}


@dataclass(frozen=True)
class BuyerMessage:
    message_id: str
    notification_id: int
    case_id: str
    case_version: int | None
    buyer_id: str
    merchant_id: str
    order_id: str
    kind: str
    at: datetime
    language: Language
    text: str

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "message_id": self.message_id,
            "notification_id": self.notification_id,
            "case_id": self.case_id,
            "case_version": self.case_version,
            "buyer_id": self.buyer_id,
            "merchant_id": self.merchant_id,
            "order_id": self.order_id,
            "kind": self.kind,
            "at": self.at.isoformat(),
            "language": self.language,
            "text": self.text,
        }


_SELECT = (
    f"SELECT m.case_id, m.case_version, m.notification_id, m.kind, m.at, m.facts, c.buyer_id, "
    f"c.merchant_id, c.order_id FROM {{t}}{MESSAGES.name} m "
    f"JOIN {{t}}{CASES.name} c ON c.case_id = m.case_id "
)


def _messages(
    store: AftersalesStore, rows: list[dict[str, Any]], default: Language
) -> list[BuyerMessage]:
    chosen = languages(store, sorted({r["buyer_id"] for r in rows}))
    found = []
    for r in rows:
        language = chosen.get(r["buyer_id"], default)
        found.append(
            BuyerMessage(
                message_id=f"notify:{r['case_id']}:{r['case_version']}",
                notification_id=int(r["notification_id"]),
                case_id=str(r["case_id"]),
                case_version=int(r["case_version"]),
                buyer_id=r["buyer_id"],
                merchant_id=r["merchant_id"],
                order_id=r["order_id"],
                kind=r["kind"],
                at=_time(r["at"]),
                language=language,
                text=render(r["kind"], json.loads(r["facts"]), r["order_id"], language),
            )
        )
    return found


def _time(value: Any) -> datetime:
    found = parse_stored_time(value)
    assert found is not None
    return found


def messages_after(
    store: AftersalesStore, position: int, stop: int, limit: int, default: Language
) -> list[BuyerMessage]:
    """The messages of events after ``position`` and up to ``stop``, in log order."""
    rows = store.query(
        _SELECT + "WHERE m.notification_id > ? AND m.notification_id <= ? "
        "ORDER BY m.notification_id LIMIT ?",
        (position, stop, limit),
    )
    return _messages(store, rows, default)


def reminders(store: AftersalesStore, now: datetime, default: Language) -> list[BuyerMessage]:
    """A reminder for every case that closes by itself within 24 h of ``now`` unless the
    buyer ships the goods back."""
    rows = store.query(
        f"SELECT case_id, buyer_id, merchant_id, order_id, due_at FROM {{t}}{CASES.name} "
        "WHERE due_action = ? AND due_at > ? AND due_at <= ? ORDER BY due_at, case_id",
        (DueAction.AUTO_CLOSE.value, store.time_param(now), store.time_param(now + REMIND_BEFORE)),
    )
    return [_reminder(store, r, default) for r in rows]


def _reminder(store: AftersalesStore, r: dict[str, Any], default: Language) -> BuyerMessage:
    due = _time(r["due_at"])
    language = languages(store, [r["buyer_id"]]).get(r["buyer_id"], default)
    return BuyerMessage(
        message_id=f"remind:{r['case_id']}:{due.astimezone(UTC).isoformat()}",
        notification_id=0,
        case_id=str(r["case_id"]),
        case_version=None,
        buyer_id=r["buyer_id"],
        merchant_id=r["merchant_id"],
        order_id=r["order_id"],
        kind="deadline_soon",
        at=due - REMIND_BEFORE,
        language=language,
        text=render("deadline_soon", {"due": due.isoformat()}, r["order_id"], language),
    )


def preview(
    store: AftersalesStore, case_id: str, now: datetime, default: Language = DEFAULT_LANGUAGE
) -> list[BuyerMessage]:
    """What the buyer of this case was told, and the reminder still to come (if a deadline
    that closes the case is running): the projection caught up first."""
    uid = case_uuid(case_id)
    Projector(store).catch_up([Notify])
    rows = store.query(_SELECT + "WHERE m.case_id = ? ORDER BY m.case_version", (str(uid),))
    told = _messages(store, rows, default)
    case = store.query(
        f"SELECT case_id, buyer_id, merchant_id, order_id, due_at, due_action "
        f"FROM {{t}}{CASES.name} WHERE case_id = ?",
        (str(uid),),
    )
    if not case:
        raise NotFound(f"no case {case_id}")
    row = case[0]
    if row["due_action"] == DueAction.AUTO_CLOSE.value and _time(row["due_at"]) > now:
        told.append(_reminder(store, row, default))
    return told


# Publishing through the relay -------------------------------------------------------------------


class NotifyRelay(Relay):
    """The relay of the buyer messages: the notify projection caught up, then its messages
    after this relay's position published to ``<prefix>.notify.<buyer>`` (see the module's
    documentation); reminders once their 24 h have begun."""

    def __init__(
        self,
        store: AftersalesStore,
        config: RelayConfig,
        language: Language = DEFAULT_LANGUAGE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_acked: Callable[[Sequence[Message]], None] | None = None,
    ) -> None:
        self.language = language
        self.clock = clock
        self.reminded: set[str] = set()
        self.projector = Projector(store)
        super().__init__(store, config, on_acked)

    def tracking_view(self) -> type[View]:
        return relay_view(f"{self.config.name}_notify")

    def _message(self, m: BuyerMessage) -> Message:
        return Message(
            notification_id=m.notification_id,
            subject=f"{self.config.prefix}.notify.{token(m.buyer_id)}",
            msg_id=m.message_id,
            payload=json.dumps(m.to_json(), ensure_ascii=False).encode("utf-8"),
            headers={"Nats-Msg-Id": m.message_id, "Aftersales-Format-Version": "1"},
        )

    def read(self, position: int) -> list[Message]:
        self.projector.catch_up([Notify])
        stop = self.projector.position(Notify) or 0
        found = messages_after(self.store, position, stop, self.config.batch_size, self.language)
        return [self._message(m) for m in found]

    async def round(self) -> int:
        count = await super().round()
        if count:
            return count
        due = [
            self._message(m)
            for m in reminders(self.store, self.clock(), self.language)
            if m.message_id not in self.reminded
        ]
        if due:
            await self.publish(due)
            self.reminded.update(m.msg_id for m in due)
            if self.on_acked is not None:
                self.on_acked(due)
        return 0

    def head(self) -> int:
        rows = self.store.query(f"SELECT max(notification_id) AS n FROM {{t}}{MESSAGES.name}")
        return int(rows[0]["n"] or 0)

    def _pending(self, position: int) -> int:
        rows = self.store.query(
            f"SELECT count(*) AS n FROM {{t}}{MESSAGES.name} WHERE notification_id > ?",
            (position,),
        )
        return int(rows[0]["n"])

    def status(self) -> dict[str, Any]:
        self.projector.catch_up([Notify])
        found = super().status()
        found["relay"] = f"{self.config.name}_notify"
        return found
