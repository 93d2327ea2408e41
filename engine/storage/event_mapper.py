"""Events as readable JSON: the mapper the store writes and reads every event with, upcasting
old shapes on reading.

Every stored topic resolves here: the modules that define the events and aggregates are
imported (their classes register the topics they were first stored under, as
``engine.case:CaseOpened``, engine/domain/events.py), and a topic ``engine.<module>:<name>``
resolves through the installed package.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    Mapper,
    StoredEvent,
    Transcoder,
    Transcoding,
)
from eventsourcing.utils import get_topic, register_topic, resolve_topic
from pydantic import BaseModel

import aftersales.engine
import aftersales.engine.domain.case
import aftersales.engine.domain.order
import aftersales.engine.domain.shop
from aftersales.engine.domain import events
from aftersales.engine.domain.events import (
    Event,
    stored_json,
    stored_state,
)

# Events as readable JSON ---------------------------------------------------------------------


def _sorted_orjson(state: dict[str, Any]) -> bytes:
    """The canonical JSON of an event's content by orjson (engine/domain/events.py,
    ``FAST_CANONICAL``): imported when the first event is sealed, so a read never loads it."""
    import orjson

    fast = functools.partial(orjson.dumps, option=orjson.OPT_SORT_KEYS)
    events.FAST_CANONICAL = fast
    return fast(state)


events.FAST_CANONICAL = _sorted_orjson
events.CHECK_ENCODERS = os.environ.get("AFTERSALES_CHECK_ENCODERS") == "1"

# A topic names a class by its module within the installed package.
register_topic("engine", aftersales.engine)


class JsonTranscoder(Transcoder):
    """Plain JSON: the events are pydantic models already dumped to JSON-native values."""

    def encode(self, obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        return json.loads(data.decode("utf-8"))

    def register(self, transcoding: Transcoding) -> None:  # pragma: no cover - not used
        raise NotImplementedError("events are pydantic models; no transcodings needed")


class PydanticMapper(Mapper[UUID]):
    """Stores each event as the JSON of its pydantic fields; upcasts old shapes on reading."""

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        assert isinstance(domain_event, BaseModel)
        kept = stored_json(domain_event)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=get_topic(type(domain_event)),
            state=kept if kept is not None else self.transcoder.encode(stored_state(domain_event)),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        return self.decode(
            stored_event.originator_id,  # type: ignore[arg-type]
            stored_event.originator_version,
            stored_event.topic,
            stored_event.state,
        )

    def decode(self, originator_id: UUID, version: int, topic: str, state: bytes) -> Event:
        """One stored event as its class, upcast if it was stored in an older shape: the one
        decoding both aggregates and projections use.

        A stored event of its class's current first version (nearly all of them) is validated
        straight from its JSON text, with its id and version appended as the last keys (they
        are columns of their own, and the last of two equal keys wins, as on the slow path):
        pydantic parses and validates in one pass, a third faster than ``json.loads`` and
        ``model_validate``. Any other shape goes through the upcasters first."""
        cls: type[Event] = resolve_topic(topic)
        if (
            cls.class_version == 1
            and state[-1:] == b"}"
            and len(state) > 2
            and b'"class_version"' not in state
        ):
            # The plain hex form: pydantic reads it, and it costs a third of str(uuid).
            uid = originator_id.hex if isinstance(originator_id, UUID) else str(originator_id)
            tail = b',"originator_id":"%s","originator_version":%d}' % (uid.encode(), version)
            return cls.model_validate_json(state[:-1] + tail)
        data: dict[str, Any] = self.transcoder.decode(state)
        from_version = data.pop("class_version", 1)
        while from_version < cls.class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(data)
            from_version += 1
        data["originator_id"] = originator_id
        data["originator_version"] = version
        return cls.model_validate(data)
