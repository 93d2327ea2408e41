"""A catch-up's batched writes leave every view's rows exactly as folding and writing the log one
event at a time does: every view's batch of a range written in one transaction, each table's
rows sent as one JSON array, compared with each event folded alone and its rows bound one by one
into the single-row upsert (how every batch was written before)."""

from __future__ import annotations

from typing import Any

from aftersales.engine.storage.store import AftersalesStore
from aftersales.projections.base import Changes, Fact, _converter
from aftersales.projections.registry import VIEWS
from aftersales.projections.runner import Projector
from scripts.workload import generate
from tests.test_projections import tables


def _one_event_at_a_time(store: AftersalesStore, projector: Projector) -> None:
    """Every view's rows, from each event folded alone and written row by row."""
    postgres = store.is_postgres
    head = projector.head()
    for view in VIEWS:
        projector.recorder(view).reset()
        facts, _, poison = projector.read(0, head, head, view.topics())
        assert poison is None
        statements: list[tuple[str, list[Any]]] = []
        for fact in facts:
            changes = Changes()
            view.fold([Fact(fact.id, fact.event)], changes)
            for name, rows in changes.rows.items():
                table = changes.tables[name]
                for row in rows.values():
                    values = [row[n] for n in table.names]
                    for i, column in enumerate(table.columns):
                        if column.kind in ("time", "uuid") and values[i] is not None:
                            values[i] = _converter(column.kind, postgres)(values[i])
                    statements.append((table.upsert(postgres), values))
        store.write(statements)


def test_batched_catch_up_writes_the_rows_one_event_at_a_time_writes(store_url: str) -> None:
    store = AftersalesStore(store_url)
    try:
        generate(store, 4000, merchants=7, case_share=0.6, seed=3)
        generate(store, 1500, merchants=3, case_share=0.9, seed=5, prefix="KT-")
        projector = Projector(store)
        _one_event_at_a_time(store, projector)
        expected = tables(store)
        assert sum(len(rows) for rows in expected.values()) > 1000
        for view in VIEWS:
            projector.recorder(view).reset()
        # Batches that split cases, and one batch of everything.
        for batch_size in (97, 100_000):
            for view in VIEWS:
                projector.recorder(view).reset()
            projector.catch_up(VIEWS, batch_size)
            assert tables(store) == expected, batch_size
    finally:
        store.close()
