"""Projections fold typed events: the aggregates' own classes, decoded and upcast by the store's
mapper, dispatched by class; and the one SQL helper both backends' statements go through."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import PlaceOrder
from aftersales.engine.domain.case_events import CaseEvent, CaseOpened, CaseRefunded
from aftersales.engine.domain.events import GENESIS_HASH, Event, chain_hash
from aftersales.engine.domain.order_events import OrderPlaced
from aftersales.engine.storage.sql import SQLITE, Dialect
from aftersales.engine.storage.store import AftersalesStore
from aftersales.projections.base import Changes, Fact, Folds, Table, View, col
from aftersales.projections.registry import VIEWS
from aftersales.projections.runner import Projector
from scripts.workload import generate
from tests.test_ledger import scenario
from tests.test_projections import tables

# A view of its own that keeps what its folds were handed ----------------------------------------

SEEN = Table("proj_seen_events", (col("seq", "int", "key"), col("kind", "text")))
seen_folds = Folds()
HANDED: list[tuple[int, Event]] = []


@seen_folds.on(CaseOpened, CaseRefunded)
def _case(e: CaseOpened | CaseRefunded, changes: Changes, seq: int) -> None:
    HANDED.append((seq, e))
    changes.row(SEEN, seq)["kind"] = type(e).__name__


@seen_folds.on(OrderPlaced)
def _order(e: OrderPlaced, changes: Changes, seq: int) -> None:
    HANDED.append((seq, e))
    changes.row(SEEN, seq)["kind"] = type(e).__name__


class Seen(View):
    name = "seen"
    tables = (SEEN,)
    folds = seen_folds


@pytest.fixture
def handed() -> Iterator[list[tuple[int, Event]]]:
    HANDED.clear()
    yield HANDED
    HANDED.clear()


def test_a_view_reads_the_classes_it_has_folds_for() -> None:
    assert Seen.events == (CaseOpened, CaseRefunded, OrderPlaced)
    assert set(Seen.topics()) == {
        "engine.case:CaseOpened",
        "engine.case:CaseRefunded",
        "engine.order:OrderPlaced",
    }
    for view in VIEWS:
        assert view.events == tuple(view.folds.table)


def test_one_class_cannot_have_two_folds() -> None:
    folds = Folds()
    folds.on(CaseOpened)(lambda e, changes, seq: None)
    with pytest.raises(TypeError, match="CaseOpened has two folds"):
        folds.on(CaseOpened)(lambda e, changes, seq: None)


def test_fold_passes_over_events_it_has_no_fold_for(handed: list[tuple[int, Event]]) -> None:
    """A read of the log serves several views at once, so a view sees others' events too."""

    class Other(CaseEvent):
        pass

    # Built with no fields at all, on purpose (given unpacked, so the type checker lets it be):
    # the fold must pass over it without reading any.
    no_fields: dict[str, Any] = {}
    Seen.fold([Fact(7, Other.model_construct(**no_fields))], Changes())
    assert handed == []


def test_folds_are_handed_typed_events_with_money_and_aware_times(
    store_url: str, handed: list[tuple[int, Event]]
) -> None:
    with Engine(store_url) as e:
        ids = scenario(e)
        projector = Projector(e.store)
        projector.catch_up([Seen], batch_size=7)
        refunds = [ev for _, ev in handed if isinstance(ev, CaseRefunded)]
        opened = [ev for _, ev in handed if isinstance(ev, CaseOpened)]
        orders = [ev for _, ev in handed if isinstance(ev, OrderPlaced)]
        assert len(orders) == 4 and {str(ev.originator_id) for ev in opened} == set(ids)
        # The scenario's refunds: 238.90 paid by shop-a, 103.00 advanced for it, 129.00 by shop-b.
        assert sum(ev.amount for ev in refunds) == Decimal("470.90")
        for seq, ev in handed:
            assert isinstance(seq, int) and isinstance(ev.originator_id, UUID)
            assert isinstance(ev.at, datetime) and ev.at.utcoffset() is not None
        for ev in refunds:
            assert isinstance(ev.amount, Decimal)
        for ev in orders:
            assert all(isinstance(line.unit_price, Decimal) for line in ev.lines)
        # In log order, each the event the aggregate recorded (the same mapper decodes both).
        assert [s for s, _ in handed] == sorted(s for s, _ in handed)
        kinds = e.store.query("SELECT kind FROM {t}proj_seen_events ORDER BY seq")
        assert [r["kind"] for r in kinds] == [type(ev).__name__ for _, ev in handed]


# Upcasting: an event stored in an older shape folds into the same rows ----------------------------


def _v1_to_v2(state: dict[str, Any]) -> None:
    """The test's old shape of CaseRefunded kept the amount as whole cents."""
    state["amount"] = str((Decimal(state.pop("amount_cents")) / 100).quantize(Decimal("0.01")))


def events_table(store: AftersalesStore) -> str:
    return store.recorder.events_table_name  # type: ignore[attr-defined,no-any-return]


def _rewrite(store: AftersalesStore, rows: list[tuple[int, bytes]]) -> None:
    recorder: Any = store.recorder
    key = "notification_id" if store.is_postgres else "rowid"
    sql = store.dialect(f"UPDATE {{t}}{events_table(store)} SET state = ? WHERE {key} = ?")
    with recorder.datastore.transaction(commit=True) as c:
        for notification_id, state in rows:
            c.execute(sql, (state, notification_id))


def _reseal(store: AftersalesStore, positions: set[int]) -> None:
    """Seal again, with the project's own hashing, the chains of the aggregates whose events
    at these positions were rewritten."""
    key = "notification_id" if store.is_postgres else "rowid"
    rows = store.query(
        f"SELECT {key} AS notification_id, originator_id, originator_version, topic, state "
        f"FROM {{t}}{events_table(store)} ORDER BY originator_id, originator_version"
    )
    touched = {str(r["originator_id"]) for r in rows if r["notification_id"] in positions}
    previous: dict[str, str] = {}
    resealed = []
    for r in rows:
        uid = str(r["originator_id"])
        if uid not in touched:
            continue
        state = json.loads(bytes(r["state"]))
        state["hash"] = chain_hash(
            previous.get(uid, GENESIS_HASH),
            UUID(uid),
            r["originator_version"],
            r["topic"],
            state,
        )
        previous[uid] = state["hash"]
        resealed.append((r["notification_id"], json.dumps(state).encode()))
    _rewrite(store, resealed)


def test_an_event_stored_in_an_older_shape_folds_into_the_same_rows(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CaseRefunded gets a (test-only) second class version whose first shape kept cents;
    half the stored refunds are put back into that shape, half are marked as the second.
    Rebuilt, every projection's rows are what they were, and the aggregates read the same."""
    with Engine(store_url) as e:
        store = e.store
        case_ids = scenario(e)
        generate(store, 1500, merchants=3)
        projector = Projector(store)
        projector.catch_up(VIEWS)
        before = tables(store)
        cases_before = {c: store.load(UUID(c)) for c in case_ids}

        key = "notification_id" if store.is_postgres else "rowid"
        stored = store.query(
            f"SELECT {key} AS notification_id, state FROM {{t}}{events_table(store)} "
            "WHERE topic = ?",
            ("engine.case:CaseRefunded",),
        )
        assert len(stored) > 10
        rewritten = []
        for i, row in enumerate(stored):
            state = json.loads(bytes(row["state"]))
            if i % 2:
                state["class_version"] = 2
            else:
                state["amount_cents"] = int(Decimal(state.pop("amount")) * 100)
            rewritten.append((row["notification_id"], json.dumps(state).encode()))
        _rewrite(store, rewritten)
        # As they would have been stored then: sealed in that shape, the chains on from them
        # chained to it (reads check every event's hash).
        _reseal(store, {n for n, _ in rewritten})
        monkeypatch.setattr(CaseRefunded, "class_version", 2)
        monkeypatch.setattr(CaseRefunded, "upcast_v1_v2", staticmethod(_v1_to_v2), raising=False)

        projector.rebuild(VIEWS)
        assert tables(store) == before
        for case_id, case in cases_before.items():
            again = store.load(UUID(case_id))
            assert again is not None and case is not None
            assert again.refunded_amount == case.refunded_amount
            assert again.version == case.version


def test_the_mapper_fast_path_decodes_as_the_upcasting_path_does(store_url: str) -> None:
    """Every stored event, decoded straight from its JSON text and through ``model_validate``
    of the parsed JSON (the path an older shape takes): the same event."""
    with AftersalesStore(store_url) as store:
        generate(store, 800, merchants=2)
        mapper = store.mapper
        notes = store.recorder.select_notifications(start=1, limit=10_000)
        assert len(notes) > 500
        for n in notes:
            fast = mapper.decode(n.originator_id, n.originator_version, n.topic, n.state)  # type: ignore[arg-type]
            data = json.loads(n.state)
            data.update(originator_id=n.originator_id, originator_version=n.originator_version)
            assert fast == type(fast).model_validate(data)


# The SQL helper -----------------------------------------------------------------------------------


def test_one_dialect_writes_both_backends_statements() -> None:
    sql = "SELECT a FROM {t}x WHERE b = ? AND c LIKE 'p%' AND d IN (" + Dialect.marks(3) + ")"
    assert SQLITE(sql) == "SELECT a FROM x WHERE b = ? AND c LIKE 'p%' AND d IN (?, ?, ?)"
    assert Dialect(postgres=True, schema="shop")(sql) == (
        "SELECT a FROM \"shop\".x WHERE b = %s AND c LIKE 'p%%' AND d IN (%s, %s, %s)"
    )
    assert Dialect.marks(0) == ""


def test_store_queries_and_view_upserts_take_the_same_helper(store_url: str) -> None:
    with Engine(store_url) as e:
        e.handle(PlaceOrder(order_id="S-1", merchant="m%1", buyer="b", lines=["X:1:1.00"]))
        Projector(e.store).catch_up(VIEWS)
        rows = e.store.query(
            "SELECT merchant_id FROM {t}proj_rates_orders WHERE merchant_id LIKE 'm%' "
            "AND order_id IN (" + Dialect.marks(2) + ")",
            ("S-1", "S-2"),
        )
        assert [r["merchant_id"] for r in rows] == ["m%1"]


class _Probe(View):
    """Only its upsert text is looked at."""

    name = "probe"
    tables = (Table("proj_probe", (col("k", "int", "key"), col("n", "int", "add"))),)
    folds = Folds()


def test_upserts_are_written_once_with_question_marks() -> None:
    table = _Probe.tables[0]
    assert "VALUES (?, ?)" in table.upsert(postgres=False)
    assert "json_array_elements(?::json)" in table.upsert_json()
    assert "%s" in Dialect(postgres=True)(table.upsert_json())


# The collector is paused for a catch-up only ------------------------------------------------------


def test_a_catch_up_gives_the_garbage_collector_back_as_it_found_it(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aftersales.projections.runner as runner

    monkeypatch.setattr(runner, "COLLECT_EVERY", 100)  # collect between batches too
    with AftersalesStore(store_url) as store:
        generate(store, 300, merchants=2)
        projector = Projector(store)
        assert gc.isenabled()
        assert projector.catch_up(VIEWS, batch_size=50) > 0
        assert gc.isenabled()
        for view in VIEWS:
            projector.recorder(view).reset()
        gc.disable()
        try:
            projector.catch_up(VIEWS, batch_size=50)
            assert not gc.isenabled()
        finally:
            gc.enable()
