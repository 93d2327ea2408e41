"""The base of every stored event: a frozen pydantic model the library can mutate aggregates with.

Each event carries, besides the library's id, version and ``timestamp`` (when it was recorded):
``at``, when it happened in the world; ``actor``, who acted (role and id); and ``command_id``, the
key that makes a retried command change nothing. Events are stored as plain JSON of these fields.
"""

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from types import UnionType
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Literal,
    Self,
    Union,
    get_args,
    get_origin,
)
from uuid import UUID

from eventsourcing.domain import BaseAggregate, CanInitAggregate, CanMutateAggregate
from eventsourcing.utils import register_topic
from pydantic import BaseModel, ConfigDict

from aftersales.engine.domain.values import Actor, DueAction, Role

# A stored event names its class by its module within the installed package
# ("engine.case:CaseOpened"), so stored events, their hashes and exported bundles do not depend
# on the name the package is installed under; such a topic resolves through the package
# (engine/storage/event_mapper.py registers it).
_PACKAGE = "aftersales."

# A topic is part of every stored event's hash: a class keeps the topic it was first stored
# under when its code moves. The modules that moved, with the start of their classes' stored
# topics (the module they were first stored from); their classes are registered under those
# topics as they are defined (``_register``), so a store written before the move reads as it did.
STORED_AS: Mapping[str, str] = {
    "aftersales.engine.domain.case_events": "engine.case:",
    "aftersales.engine.domain.case": "engine.case:",
    "aftersales.engine.domain.order_events": "engine.order:",
    "aftersales.engine.domain.order": "engine.order:",
    "aftersales.engine.domain.shop": "engine.shop:",
}


def stored_topic(cls: type) -> str:
    """The topic a class is stored under: its module without the package prefix (or the module
    it was first stored from), and its name."""
    start = STORED_AS.get(cls.__module__, f"{cls.__module__.removeprefix(_PACKAGE)}:")
    return f"{start}{cls.__qualname__}"


def _register(cls: type) -> str:
    """Set a class's stored topic, registered with the library when it is not its module's own
    (a topic written by a module that has since moved)."""
    topic = stored_topic(cls)
    if cls.__module__ in STORED_AS:
        register_topic(topic, cls)
    return topic


class Event(BaseModel, CanMutateAggregate[UUID]):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    # Bumped when an event class changes shape; old shapes are upcast on reading
    # by ``upcast_v{n}_v{n+1}`` class methods, as the library does for its own events.
    class_version: ClassVar[int] = 1
    # The library names a class by its TOPIC when it has one.
    TOPIC: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.TOPIC = _register(cls)

    originator_id: UUID
    originator_version: int
    timestamp: datetime
    at: datetime
    actor: Actor
    command_id: str
    # sha256 over this event's stored content and the previous event's hash: a chain per
    # aggregate, so an edited, deleted or reordered stored event shows up on verification.
    hash: str = ""
    # The JSON text the event was sealed with, kept (in a slot, not a pydantic private
    # attribute, which costs every event's construction) so storing it does not dump it
    # again. A copy does not carry it: its content may differ.
    __slots__ = ("_stored_json",)

    def apply(self, aggregate: Any) -> None:
        aggregate.when(self)


class Created(Event, CanInitAggregate[UUID]):
    originator_topic: str


GENESIS_HASH = "0" * 64


def stored_state(event: BaseModel) -> dict[str, Any]:
    """The JSON an event is stored as (its id and version are columns of their own)."""
    state = event.model_dump(mode="json", exclude={"originator_id", "originator_version"})
    class_version = getattr(type(event), "class_version", 1)
    if class_version > 1:
        state["class_version"] = class_version
    return state


# The canonical JSON hashes are taken over: sorted keys, no spaces, UTF-8 as is. One encoder,
# made once (``json.dumps`` with options builds a new one per call).
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode

# The same bytes a tenth of the time (the largest part of sealing an event, so of every write
# path): orjson's sorted-key encoding, installed by the storage layer
# (engine/storage/event_mapper.py; the domain imports no JSON library of its own). It writes
# every character and key order as the json module does (checked for each character by
# tests/test_recorded_store.py) and differs only for floats (``1e16`` where the json module
# writes ``1e+16``, ``null`` for NaN), so it writes only the events of classes whose stored JSON
# cannot hold one (``_orjson_safe``); what it refuses (an integer beyond 64 bits, a lone
# surrogate, a depth over 254) goes to the json module. With CHECK_ENCODERS (the tests set it,
# in every process they start: AFTERSALES_CHECK_ENCODERS=1), every event sealed is encoded both
# ways and the two compared.
FAST_CANONICAL: Callable[[dict[str, Any]], bytes] | None = None
CHECK_ENCODERS = False


def canonical_bytes(state: dict[str, Any], *, floats: bool = True) -> bytes:
    """``_canonical(state)`` in UTF-8; ``floats``: the state may hold a float."""
    fast = FAST_CANONICAL
    if fast is not None and not floats:
        try:
            encoded = fast(state)
        except TypeError:  # orjson.JSONEncodeError: what it cannot write, the json module does
            pass
        else:
            if CHECK_ENCODERS:
                assert encoded == _canonical(state).encode("utf-8"), state
            return encoded
    return _canonical(state).encode("utf-8")


_SAFE: dict[type, bool] = {}


def _orjson_safe(kind: type[BaseModel]) -> bool:
    """Whether the stored JSON of a model class holds only strings, integers, booleans, nulls,
    lists and objects (no float): worked out once per class from its field types."""
    safe = _SAFE.get(kind)
    if safe is None:
        _SAFE[kind] = False  # while it is worked out: a model that holds itself is not known
        safe = _SAFE[kind] = all(_holds_no_float(f.annotation) for f in kind.model_fields.values())
    return safe


def _holds_no_float(annotation: Any) -> bool:
    """A field type whose JSON (``model_dump(mode="json")``) cannot hold a float."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Union or origin is UnionType:
        return all(_holds_no_float(a) for a in args)
    if origin is Literal:
        return all(type(a) in (str, int, bool) or a is None for a in args)
    if origin in (tuple, list, frozenset, set):
        return all(a is Ellipsis or _holds_no_float(a) for a in args)
    if origin is dict:
        return args[0] is str and _holds_no_float(args[1])
    if annotation is type(None) or annotation is None:
        return True
    if origin is not None or not isinstance(annotation, type):
        return False  # Any, a name not resolved yet, a generic: may hold anything
    if issubclass(annotation, bool | int | str | datetime | Decimal | UUID):
        return not issubclass(annotation, float)
    if issubclass(annotation, Enum):
        return all(type(m.value) in (str, int) for m in annotation)
    if issubclass(annotation, BaseModel):
        return _orjson_safe(annotation)
    return False


def _digest(
    previous: str,
    originator_id: UUID | str,
    originator_version: int,
    topic: str,
    *body: bytes | memoryview,
) -> str:
    # Exactly sha256 over ``previous`` and ``_canonical({"originator_id": ...,
    # "originator_version": ..., "state": content, "topic": ...})`` with ``body`` the canonical
    # content in UTF-8 (in parts), written out in sorted key order so the content is encoded
    # only once (and, read from the store, hashed where it lies, not copied).
    if type(originator_version) is not int:
        raise TypeError("originator_version must be an int")
    uid = f'"{originator_id}"' if isinstance(originator_id, UUID) else _canonical(originator_id)
    digest = hashlib.sha256(
        f'{previous}{{"originator_id":{uid},"originator_version":{originator_version},"state":'.encode()
    )
    for part in body:
        digest.update(part)
    tail = _TOPIC_TAILS.get(topic)
    if tail is None:
        tail = f',"topic":{_canonical(topic)}}}'.encode()
        if len(_TOPIC_TAILS) < 1000:  # the classes' topics; any other is encoded each time
            _TOPIC_TAILS[topic] = tail
    digest.update(tail)
    return digest.hexdigest()


_TOPIC_TAILS: dict[str, bytes] = {}


def chain_hash(
    previous: str,
    originator_id: UUID | str,
    originator_version: int,
    topic: str,
    state: dict[str, Any],
) -> str:
    """The hash of one stored event: its id, version, type (topic) and stored JSON (less its
    own hash), chained to the hash of the event before it. It is sha256 over the previous hash
    followed by the canonical JSON (sorted keys, no spaces, UTF-8 as is) of
    ``{"originator_id", "originator_version", "state", "topic"}``."""
    content = {k: v for k, v in state.items() if k != "hash"}
    body = _canonical(content).encode("utf-8")
    return _digest(previous, originator_id, originator_version, topic, body)


class Unreadable(ValueError):
    """A stored event that cannot be used: its bytes are not what was sealed, or they do not
    make an event. The message says why, in a reader's words."""


# The tail the store writes every sealed event with: the hash, last, after the content.
_TAIL_START = b'"hash":"'
_TAIL_LENGTH = len(_TAIL_START) + 64 + 2  # '"hash":"' + 64 hex digits + '"}'


def _split_tail(state: bytes) -> tuple[tuple[bytes | memoryview, ...], str] | None:
    """The canonical content (in parts) and the hash of stored bytes in the form the store
    writes (the content with the hash added last), else None. Read at fixed offsets: no scan,
    no copy."""
    end = len(state) - _TAIL_LENGTH
    if end < 1 or not state.endswith(b'"}') or not state.startswith(_TAIL_START, end):
        return None
    claimed = state[end + len(_TAIL_START) : -2]
    if not claimed.isalnum():  # hex digits; a changed one shows when it is compared
        return None
    before = state[end - 1]
    if before == _COMMA:  # the content: the bytes before the comma, closed
        return (memoryview(state)[: end - 1], b"}"), claimed.decode()
    if before == _BRACE:
        return (b"{}",), claimed.decode()
    return None


_COMMA, _BRACE = ord(","), ord("{")


def stored_hash(state: bytes) -> str | None:
    """The hash a stored event carries, read from its bytes (None if it carries none). Given
    only the last bytes of an event, it reads the hash if the store wrote it there."""
    split = _split_tail(state)
    if split is not None:
        return split[1]
    try:
        value = json.loads(state)
    except (ValueError, RecursionError):
        return None
    kept = value.get("hash") if isinstance(value, dict) else None
    return kept if isinstance(kept, str) else None


def verified_hash(
    previous: str, originator_id: UUID | str, originator_version: int, topic: str, state: bytes
) -> str:
    """The hash of one stored event, once it is checked to be the hash of its content chained
    to ``previous`` (the hash of the event before it); else ``Unreadable`` says why.

    The stored bytes are, as the store writes them, the canonical content with the hash added
    last, so the content's canonical form is the bytes less that tail: hashed as they are, with
    no parse. Any other form is parsed and put in canonical form (``chain_hash``)."""
    split = _split_tail(state)
    if split is not None:
        body, claimed = split
        if _digest(previous, originator_id, originator_version, topic, *body) == claimed:
            return claimed
    try:
        content = json.loads(state)
    except (ValueError, RecursionError) as exc:
        raise Unreadable(f"stored bytes are not JSON ({_first_line(exc)})") from None
    if not isinstance(content, dict) or not isinstance(content.get("hash"), str):
        raise Unreadable("stored JSON carries no hash")
    claimed = content["hash"]
    if chain_hash(previous, originator_id, originator_version, topic, content) != claimed:
        raise Unreadable(_MISMATCH_FIRST if originator_version == 1 else _MISMATCH)
    return str(claimed)


_MISMATCH_FIRST = "hash does not match its content (altered)"
_MISMATCH = "hash does not match its content and the event before it (altered, or the chain broken)"


def check_times(event: BaseModel) -> None:
    """Every time on an event can be read as UTC (``Unreadable`` if one cannot: a time at the
    very edge of the calendar, such as year 1 at +14:00, overflows every UTC conversion)."""
    for name in _time_fields(type(event)):
        value = getattr(event, name)
        if isinstance(value, datetime):
            # Only a time in the calendar's first or last year can fail to convert.
            if value.year in _EDGE_YEARS:
                try:
                    value.astimezone(UTC)
                except (OverflowError, ValueError):
                    raise Unreadable(f"{name} {value.isoformat()} cannot be read as UTC") from None
        elif isinstance(value, BaseModel):
            check_times(value)


_EDGE_YEARS = frozenset({1, 9999})


_TIME_FIELDS: dict[type[BaseModel], tuple[str, ...]] = {}


def _time_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    """The fields of a class that hold a time or a model that may (worked out once)."""
    found = _TIME_FIELDS.get(cls)
    if found is None:
        found = tuple(
            name
            for name, info in cls.model_fields.items()
            if "datetime" in str(info.annotation) or "Deadline" in str(info.annotation)
        )
        _TIME_FIELDS[cls] = found
    return found


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def leaf_bytes(
    originator_id: UUID | str, originator_version: int, topic: str, state: bytes
) -> bytes:
    """What a checkpoint's Merkle leaf commits to for one stored event
    (engine/integrity/checkpoint_verify.py): its id, version and type (topic) as one line of
    canonical JSON, then the stored bytes exactly as stored, hash included. So any change to a
    stored event, a re-sealed chain as much as a changed space, changes its leaf."""
    head = _canonical([str(originator_id), originator_version, topic])
    return head.encode("utf-8") + b"\n" + bytes(state)


def _sealed(event: Event, previous: str) -> Event:
    state = stored_state(event)
    state.pop("hash", None)
    kind = type(event)
    topic = kind.TOPIC
    body = canonical_bytes(state, floats=not _orjson_safe(kind))
    digest = _digest(previous, event.originator_id, event.originator_version, topic, body)
    # The event was made just now and nobody else holds it: set its hash in place rather
    # than copying the frozen model.
    event.__dict__["hash"] = digest
    # The stored text is the canonical content with the hash added as the last key.
    stored = body[:-1] + (b"," if len(body) > 2 else b"") + b'"hash":"%s"}' % digest.encode()
    object.__setattr__(event, "_stored_json", stored)
    return event


def stored_json(event: object) -> bytes | None:
    """The JSON text an event was sealed with, if it was sealed in this process."""
    kept: bytes | None = getattr(event, "_stored_json", None)
    return kept


class Aggregate(BaseAggregate[UUID]):
    """An aggregate whose events are sealed into a hash chain as they are recorded."""

    if TYPE_CHECKING:
        last_hash: str

    # The stored bytes of the last event applied, when known: sealed in this process, or set
    # by the store that read it.
    last_stored: bytes | None = None
    # The version and stored bytes of the last event the pending events build on (set when the
    # first of them is triggered): the store appends them only if its event at that version is
    # still exactly that, so nothing is written over an event deleted or changed since the
    # aggregate was read (a case kept in memory, say).
    built_on: tuple[int, bytes | None] | None = None

    TOPIC: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.TOPIC = _register(cls)

    @classmethod
    def _create_sealed(cls, event_class: type[Created], *, id: UUID, **kwargs: Any) -> Self:
        event = event_class(
            originator_id=id,
            originator_version=cls.INITIAL_VERSION,
            originator_topic=cls.TOPIC,
            **kwargs,
        )
        sealed = _sealed(event, GENESIS_HASH)
        aggregate = sealed.mutate(None)
        assert isinstance(aggregate, cls)
        aggregate.pending_events.append(sealed)
        return aggregate

    def trigger_event(self, event_class: type[CanMutateAggregate[UUID]], **kwargs: Any) -> None:
        assert issubclass(event_class, Event)
        event = event_class(originator_id=self.id, originator_version=self.version + 1, **kwargs)
        sealed = _sealed(event, self.last_hash)
        self.check_new(sealed)
        if not self.pending_events:
            self.built_on = (self.version, self.last_stored)
        sealed.mutate(self)
        self.pending_events.append(sealed)

    def check_new(self, event: Event) -> None:
        """Refuse an event about to be recorded that would break an invariant
        (``engine/domain/invariants.py``), before it changes anything."""

    def when(self, event: Event) -> None:
        self.last_hash = event.hash
        self.last_stored = stored_json(event)


class Deadline(BaseModel):
    """A running deadline: what the system does at ``due_at`` if nobody acts first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    due_at: datetime
    action: DueAction
    policy_version: str


@dataclass(frozen=True, slots=True)
class Act:
    """One action's circumstances, handed to the domain by the service (which owns the clock).
    A plain dataclass: the service builds it from values it has checked, once per action."""

    at: datetime
    actor: Actor
    command_id: str
    recorded_at: datetime

    def by(self, role: Role, actor_id: str) -> "Act":
        """The same circumstances for another actor (what a rule, the system or the buyer
        records within an action the engine takes for them)."""
        return replace(self, actor=Actor(role=role, id=actor_id))

    def fields(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "actor": self.actor,
            "command_id": self.command_id,
            "timestamp": self.recorded_at,
        }
