"""Signed checkpoints: the Merkle tree against a plain recursive one, the kept tree grown across
many checkpoints, and, on both backends, what someone who can write to the database (but does not
hold the signing key) tries: a refund changed and its hash chain re-sealed with the project's own
hashing code, an event deleted, history rewritten together with the kept tree, a forged head; and
a wrong public key. `audit --verify`, `checkpoint verify` and the offline bundle verifier (a real
process) each say what and where. And a checkpoint signs only events that verify: one edited,
deleted or forged since the last checkpoint is refused, named, and nothing is signed; `checkpoint
verify` reads the events signed since it last verified (all with --full) and those not yet
signed, and names the same."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

import aftersales.engine.integrity.merkle as merkle
from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import OpenCase, RateCase
from aftersales.engine.domain.case_events import CaseRefunded
from aftersales.engine.domain.errors import Poisoned
from aftersales.engine.domain.events import chain_hash, leaf_bytes
from aftersales.engine.domain.order_events import CaseUnlinked
from aftersales.engine.integrity.audit_checks import stored_form
from aftersales.engine.integrity.checkpoint_store import LEAVES, NODES, Tree
from aftersales.engine.integrity.checkpoint_verify import verify_log
from aftersales.engine.integrity.checkpoints import TreeRows, take_checkpoint
from aftersales.engine.integrity.merkle import Builder
from aftersales.engine.integrity.reading import read_rows
from aftersales.engine.integrity.signing_keys import generate_key, load_public_key, load_signing_key
from scripts.workload import generate
from tests import test_audit
from tests import test_poison as poison
from tests.conftest import at, place_delivered
from tests.test_audit import (
    VERIFIER,
    load_verifier,
    row_id,
    set_state,
    sql,
)

# The audit tests' fixture: a return refunded 39.90 and rated (versions 1 to 6).
refunded_case = test_audit.phone_case
ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


# The tree itself ---------------------------------------------------------------------------------


def naive_root(leaves: list[bytes]) -> bytes:
    """RFC 6962's MTH, written as the RFC writes it."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return merkle.node_hash(naive_root(leaves[:k]), naive_root(leaves[k:]))


def test_roots_and_proofs_agree_with_the_rfc_recursion() -> None:
    verifier = load_verifier()
    for n in [*range(1, 40), 255, 256, 257, 513]:
        leaves = [merkle.leaf_hash(b"%d" % i) for i in range(n)]
        root = naive_root(leaves)
        built = Builder()
        for leaf in leaves:
            built.append(leaf)
        assert built.root() == merkle.root_of(leaves) == root

        def sub(start: int, level: int, leaves: list[bytes] = leaves) -> bytes:
            return merkle.perfect_root(leaves[start : start + (1 << level)])

        for i in {0, n // 3, n - 1}:
            proof = merkle.inclusion_proof(i, n, sub)
            assert merkle.verify_inclusion(i, n, leaves[i], proof, root)
            assert verifier.verify_inclusion(i, n, leaves[i], proof, root)
            other = merkle.leaf_hash(b"forged")
            assert not merkle.verify_inclusion(i, n, other, proof, root)
            assert not verifier.verify_inclusion(i, n, other, proof, root)
            if n > 1:
                assert not merkle.verify_inclusion((i + 1) % n, n, leaves[i], proof, root)
        for m in {1, n // 2 or 1, n - 1 or 1, n}:
            old = naive_root(leaves[:m])
            proof = merkle.consistency_proof(m, n, sub)
            assert merkle.verify_consistency(m, n, old, root, proof)
            if m < n:
                assert not merkle.verify_consistency(m, n, merkle.leaf_hash(b"x"), root, proof)


def test_the_verifier_hashes_leaves_as_the_engine_does() -> None:
    verifier = load_verifier()
    oid = uuid.uuid4()
    state = '{"amount":"39.90","hash":"ab","note":"é"}'.encode()
    topic = get_topic(CaseRefunded)
    ours = merkle.leaf_hash(leaf_bytes(oid, 5, topic, state))
    assert verifier.leaf_hash(str(oid), 5, topic, state) == ours
    assert verifier.leaf_hash(str(oid), 6, topic, state) != ours


# Keys -------------------------------------------------------------------------------------------


def invoke(store: str, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(cli, ["--store", store, *args])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private = tmp_path / "signing.pem"
    invoke("sqlite:///unused.db", "checkpoint", "keygen", "--out", str(private))
    return private, Path(f"{private}.pub")


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    private = tmp_path / "k.pem"
    result = invoke("sqlite:///unused.db", "checkpoint", "keygen", "--out", str(private), "--json")
    made = json.loads(result.stdout)
    assert private.stat().st_mode & 0o777 == 0o600
    assert made["public_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    assert Path(made["public_key"]).read_text() == made["public_pem"]
    again = invoke("sqlite:///unused.db", "checkpoint", "keygen", "--out", str(private), code=2)
    assert "exists: a key is never written over" in again.stderr
    # A raw 32-byte key (bytes or hex) signs the same as its PEM.
    key = load_signing_key(private)
    raw = tmp_path / "raw.key"
    from cryptography.hazmat.primitives import serialization

    raw.write_text(
        key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        ).hex()
    )
    assert load_signing_key(raw).public_key() == key.public_key()
    assert load_public_key(Path(made["public_key"])) == key.public_key()


def test_no_key_or_a_bad_key_is_bad_input(store_url: str, tmp_path: Path) -> None:
    result = CliRunner(env={"AFTERSALES_SIGNING_KEY": None}).invoke(
        cli, ["--store", store_url, "checkpoint", "--json"]
    )
    assert result.exit_code == 2
    assert "no signing key" in json.loads(result.stdout)["error"]["message"]
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    result = invoke(store_url, "checkpoint", "--signing-key", str(junk), code=2)
    assert "neither a PEM Ed25519 key nor a raw 32-byte key" in result.stderr
    result = CliRunner(env={"AFTERSALES_PUBLIC_KEY": None}).invoke(
        cli, ["--store", store_url, "checkpoint", "verify"]
    )
    assert result.exit_code == 2 and "no public key" in result.stderr
    # A signing key others can read signs, with a warning.
    private = tmp_path / "k.pem"
    generate_key(private)
    private.chmod(0o644)
    result = invoke(store_url, "checkpoint", "--signing-key", str(private))
    assert "can be read by others than its owner" in result.stderr
    assert "nothing to checkpoint: the log is empty" in result.stdout


# The kept tree, grown over many checkpoints ------------------------------------------------------


def synthetic(engine: Engine, n: int) -> list[uuid.UUID]:
    """``n`` stored events of aggregates of their own (the tree hashes bytes; it reads nothing)."""
    ids = [uuid.uuid4() for _ in range(n)]
    engine.store.recorder.insert_events(
        [StoredEvent(i, 1, "tests:Synthetic", b'{"n":%d}' % k) for k, i in enumerate(ids)]
    )
    return ids


def log_leaves(engine: Engine, size: int) -> list[bytes]:
    held = {p: leaf for p, leaf, _ in Tree(engine.store).events(0, size)}
    return [held.get(p, merkle.EMPTY_LEAF) for p in range(1, size + 1)]


def test_the_kept_tree_grows_across_checkpoints_with_a_gap(engine: Engine) -> None:
    key = Ed25519PrivateKey.generate()
    sizes: list[int] = []
    for n in (100, 156, 1, 300, 44):
        # Real orders and cases (each a few events): a checkpoint signs only what verifies.
        generate(engine.store, n, prefix=f"G{len(sizes)}-", seed=len(sizes))
        if len(sizes) == 2:
            # A position that holds no event (as an id a rolled-back transaction took).
            [lost] = synthetic(engine, 1)
            generate(engine.store, 1, prefix="GAP-")
            sql(
                engine.store.url.text,
                "DELETE FROM {events} WHERE originator_id = ?",
                (row_id(engine.store.url.text, str(lost)),),
            )
        taken = take_checkpoint(engine.store, key, NOW)
        assert taken.new and taken.head is not None
        sizes.append(taken.head.size)
        assert taken.head.root == merkle.root_of(log_leaves(engine, taken.head.size))
    assert sizes == sorted(sizes) and sizes[-1] >= 601
    assert not take_checkpoint(engine.store, key, NOW).new  # nothing new: nothing signed
    check = verify_log(engine.store, key.public_key(), full=True)
    assert check.problems == [] and len(check.heads) == 5
    assert check.events_read == check.heads[-1].events


# Tampering, on both backends ---------------------------------------------------------------------


def checkpoint(store: str, private: Path) -> dict[str, Any]:
    result = invoke(store, "checkpoint", "--signing-key", str(private), "--json")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def audit(store: str, case_id: str, *args: str, code: int = 0) -> dict[str, Any]:
    result = invoke(store, "audit", case_id, "--verify", "--json", *args, code=code)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def verify_bundle(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", str(VERIFIER), str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={k: v for k, v in os.environ.items() if k != "AFTERSALES_PUBLIC_KEY"},
    )


def reseal(store: str, uid: str, start: int, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit the stored event at version ``start`` and re-seal the chain from it on, with the
    engine's own hashing, as someone holding the database (not the signing key) can."""
    rows = sql(
        store,
        "SELECT originator_version, topic, state FROM {events} WHERE originator_id = ? "
        "ORDER BY originator_version",
        (row_id(store, uid),),
    )
    previous = json.loads(bytes(rows[start - 2][2]))["hash"]
    for version, topic, raw in rows[start - 1 :]:
        state = json.loads(bytes(raw))
        if version == start:
            edit(state)
        state["hash"] = chain_hash(previous, uuid.UUID(uid), version, topic, state)
        previous = state["hash"]
        set_state(store, uid, version, stored_form(state))


def reseal_refund(engine: Engine, store: str, case_id: str, amount: str) -> None:
    """The refund of a case made ``amount``, its chain re-sealed, and its order's ledger (the
    amounts refunded on its lines) and chain too: every check but the checkpoint holds."""
    reseal(store, case_id, 5, lambda state: state.update(amount=amount))
    order = engine.load_case(uuid.UUID(case_id)).order_ref
    rows = sql(
        store,
        "SELECT originator_version, topic FROM {events} WHERE originator_id = ?",
        (row_id(store, str(order)),),
    )
    [unlinked] = [v for v, topic in rows if topic == get_topic(CaseUnlinked)]

    def refunded(state: dict[str, Any]) -> None:
        state["refunded"] = {sku: amount for sku in state["refunded"]}

    reseal(store, str(order), unlinked, refunded)


def test_a_resealed_refund_is_caught_by_the_checkpoint(
    engine: Engine, store_url: str, refunded_case: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    signed = checkpoint(store_url, private)["checkpoint"]
    events = signed["events"]  # the case's 6 and its order's
    refund_at = Tree(engine.store).positions([uuid.UUID(refunded_case)])[
        (uuid.UUID(refunded_case), 5)
    ]
    honest = audit(store_url, refunded_case, "--public-key", str(public))
    assert honest["checkpoint"]["covered"] == events and honest["checkpoint"]["uncovered"] == []
    good = tmp_path / "good.json"
    invoke(store_url, "audit", refunded_case, "--export", str(good))
    ok = verify_bundle(good, "--public-key", str(public))
    assert ok.returncode == 0 and f"{events} event(s) proven signed" in ok.stdout, ok

    reseal_refund(engine, store_url, refunded_case, "20.00")
    # The chain and every rule hold: without the key nothing is wrong to see.
    unanchored = audit(store_url, refunded_case)
    assert unanchored["verified"] and unanchored["state"]["refunded_amount"] == "20.00"
    assert "give --public-key" in unanchored["checkpoint"]["note"]

    report = audit(store_url, refunded_case, "--public-key", str(public), code=3)
    problems = {(p["version"], p["order_version"]): p["message"] for p in report["problems"]}
    assert {p["check"] for p in report["problems"]} == {"checkpoint"}
    # The case's refund and the event after it, and the order's events from the one re-sealed.
    assert {v for v, _ in problems if v is not None} == {5, 6}
    assert any(o is not None for _, o in problems)
    assert problems[(5, None)].startswith(
        f"case version 5 (log position {refund_at}) is not the event the checkpoint at position "
        f"{signed['position']} signed"
    )
    text = invoke(store_url, "audit", refunded_case, "--public-key", str(public), code=0).stdout
    assert f"{len(problems)} event(s) or fact(s) do NOT match it" in text

    bundle = tmp_path / "tampered.json"
    invoke(store_url, "audit", refunded_case, "--export", str(bundle))
    caught = verify_bundle(bundle, "--public-key", str(public))
    assert caught.returncode == 3, caught
    assert f"case version 5 (log position {refund_at}) is not the event the" in caught.stdout
    blind = verify_bundle(bundle)
    assert blind.returncode == 0 and "was not checked: give --public-key" in blind.stdout

    # A later checkpoint grows the kept tree; it never folds the rewritten event in.
    checkpoint(store_url, private)
    later = invoke(store_url, "checkpoint", "verify", "--public-key", str(public), "--full", code=3)
    assert (
        f"position {refund_at} (" in later.stdout
        and "not the event that was signed (changed)" in (later.stdout)
    )


def test_an_event_deleted_under_a_checkpoint_is_caught(
    engine: Engine, store_url: str, refunded_case: str, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    signed = checkpoint(store_url, private)["checkpoint"]
    last = Tree(engine.store).positions([uuid.UUID(refunded_case)])[(uuid.UUID(refunded_case), 6)]
    # The last event goes, and the case index is set back to match: the chain still holds.
    sql(
        store_url,
        "DELETE FROM {events} WHERE originator_id = ? AND originator_version = 6",
        (row_id(store_url, refunded_case),),
    )
    Tree(engine.store).write(
        lambda execute: execute(
            "UPDATE {t}aftersales_cases SET version = 5 WHERE case_id = ?", (refunded_case,)
        )
    )
    assert audit(store_url, refunded_case)["verified"]
    report = audit(store_url, refunded_case, "--public-key", str(public), code=3)
    [problem] = report["problems"]
    assert problem["check"] == "checkpoint" and problem["version"] is None
    assert f"the checkpoint signed {signed['events']}: 1 deleted since" in problem["message"]
    full = invoke(store_url, "checkpoint", "verify", "--public-key", str(public), "--full", code=3)
    assert f"position {last}: the event signed there is gone (deleted)" in full.stdout


def test_history_rewritten_with_the_kept_tree_is_caught(
    engine: Engine, store_url: str, refunded_case: str, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    first = checkpoint(store_url, private)["checkpoint"]
    reseal_refund(engine, store_url, refunded_case, "20.00")
    # The tree tables rebuilt from the rewritten log, as the checkpoint would build them.
    tree = Tree(engine.store)
    pending = TreeRows()
    rebuilt = Builder(
        on_chunk=lambda i, leaves: pending.chunks.__setitem__(i, b"".join(leaves)),
        on_node=lambda level, i, h: pending.nodes.__setitem__((level, i), h),
    )
    for _position, leaf, _label in tree.events(0, first["position"]):
        rebuilt.append(leaf)
    pending.chunks[0] = b"".join(rebuilt.partial)
    tree.write(pending.write)
    assert rebuilt.root().hex() != first["root"]

    # A new checkpoint refuses to sign on top of it ...
    refused = invoke(store_url, "checkpoint", "--signing-key", str(private), code=3)
    assert "the kept tree no longer gives the root signed at position" in refused.stderr
    # ... the audit proves nothing against the signed root ...
    report = audit(store_url, refunded_case, "--public-key", str(public), code=3)
    assert any(
        "the kept tree does not give the root signed" in p["message"] for p in report["problems"]
    )
    # ... and the whole log does not give the signed root.
    full = invoke(store_url, "checkpoint", "verify", "--public-key", str(public), "--full", code=3)
    assert "do not give the root signed" in full.stdout
    # Throwing the kept tree away does not help either, nor does asking for it to be rebuilt.
    throw_away_the_kept_tree(engine)
    refused = invoke(store_url, "checkpoint", "--signing-key", str(private), code=3)
    assert "the kept tree has lost" in refused.stderr
    repair = ["checkpoint", "verify", "--public-key", str(public), "--repair"]
    refused = invoke(store_url, *repair, code=3)
    assert "do not give the root signed" in refused.stdout
    assert not Tree(engine.store).rows(f"SELECT chunk FROM {{t}}{LEAVES}")


def throw_away_the_kept_tree(engine: Engine) -> None:
    def delete(execute: Callable[[str, Sequence[Any]], None]) -> None:
        for table in (LEAVES, NODES):
            execute(f"DELETE FROM {{t}}{table}", ())

    Tree(engine.store).write(delete)


def test_a_lost_kept_tree_is_written_again_only_from_the_signed_history(
    engine: Engine, store_url: str, refunded_case: str, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    checkpoint(store_url, private)
    throw_away_the_kept_tree(engine)
    refused = invoke(store_url, "checkpoint", "--signing-key", str(private), code=3)
    assert "the kept tree has lost the leaves of positions 1 to 256" in refused.stderr
    assert (
        "[checkpoint]"
        in invoke(store_url, "audit", refunded_case, "--public-key", str(public)).stdout
    )
    repaired = invoke(store_url, "checkpoint", "verify", "--public-key", str(public), "--repair")
    assert "the kept tree was written again from them" in repaired.stdout
    place_delivered(engine, "KS-2")
    assert checkpoint(store_url, private)["new"]
    assert audit(store_url, refunded_case, "--public-key", str(public))["verified"]


def test_a_wrong_public_key_or_a_forged_head_fails(
    engine: Engine, store_url: str, refunded_case: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, _public = keys
    checkpoint(store_url, private)
    other_private = tmp_path / "other.pem"
    other_public, _ = generate_key(other_private)
    report = audit(store_url, refunded_case, "--public-key", str(other_public), code=3)
    [problem] = report["problems"]
    assert "was signed with key" in problem["message"]
    assert "not with the public key given" in problem["message"]
    bundle = tmp_path / "b.json"
    invoke(store_url, "audit", refunded_case, "--export", str(bundle))
    wrong = verify_bundle(bundle, "--public-key", str(other_public))
    assert wrong.returncode == 3 and "not the public key given" in wrong.stdout
    listed = invoke(
        store_url, "checkpoint", "verify", "--public-key", str(other_public), code=3
    ).stdout
    assert "not with the public key given" in listed

    # The head rewritten in the store (another root, the key id kept): the signature fails.
    tree = Tree(engine.store)
    [head] = tree.heads()
    forged = head.text.replace(head.root.hex(), hashlib.sha256(b"forged").hexdigest())
    tree.write(
        lambda execute: execute(
            "UPDATE {t}aftersales_checkpoints SET head = ? WHERE size = ?", (forged, head.size)
        )
    )
    report = audit(store_url, refunded_case, "--public-key", str(_public), code=3)
    assert "its signed head was altered or forged" in report["problems"][0]["message"]


def test_events_after_the_checkpoint_are_said_not_covered(
    engine: Engine, store_url: str, refunded_case: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    checkpoint(store_url, private)
    place_delivered(engine, "KS-2")
    cid = engine.handle(
        OpenCase(
            order_id="KS-2",
            type="refund_only",
            reason="logistics.damaged",
            amount="39.90",
            at=at(days=3),
        )
    )["case_id"]
    report = audit(store_url, cid, "--public-key", str(public))
    assert report["verified"] and report["checkpoint"]["covered"] == 0
    uncovered = [(u["aggregate"], u["version"]) for u in report["checkpoint"]["uncovered"]]
    assert uncovered[:2] == [("case", 1), ("order", 1)] and len(uncovered) >= 4
    text = invoke(store_url, "audit", cid, "--public-key", str(public)).stdout
    assert "not yet covered by any checkpoint: case version 1, order version 1" in text
    bundle = tmp_path / "b.json"
    invoke(store_url, "audit", cid, "--export", str(bundle))
    offline = verify_bundle(bundle, "--public-key", str(public))
    assert offline.returncode == 0 and "not yet covered by the checkpoint: case version 1" in (
        offline.stdout
    )
    checkpoint(store_url, private)
    assert audit(store_url, cid, "--public-key", str(public))["checkpoint"]["covered"] == len(
        uncovered
    )


def test_the_scheduler_signs_checkpoints(store_url: str, keys: tuple[Path, Path]) -> None:
    private, public = keys
    with Engine(store_url) as engine:
        place_delivered(engine)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aftersales.commands.cli.main",
                "--store",
                store_url,
                "scheduler",
                "--interval",
                "0.1",
                "--checkpoint-every",
                "0.1",
                "--signing-key",
                str(private),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not Tree(engine.store).heads():
                time.sleep(0.1)
            place_delivered(engine, "KS-2")  # two events, two commits: a head may fall between
            head = engine.store.recorder.max_notification_id() or 0
            while time.monotonic() < deadline and (
                not (signed := Tree(engine.store).heads()) or signed[-1].size < head
            ):
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "signing a checkpoint every 0.1 s" in err and "Traceback" not in err
        heads = Tree(engine.store).heads()
        assert len(heads) >= 2 and heads[-1].size == engine.store.recorder.max_notification_id()
        assert verify_log(engine.store, load_public_key(public), full=True).problems == []


# Signing only what verifies ----------------------------------------------------------------------


def signed_then_refunded(engine: Engine, store_url: str, private: Path) -> tuple[str, int]:
    """An order signed by a checkpoint, then a case opened, refunded and rated after it (all
    four of its events unsigned); the case and the checkpoint's position."""
    place_delivered(engine, "KS-0")
    signed: int = checkpoint(store_url, private)["checkpoint"]["position"]
    case_id = poison.refunded_case(engine, "KS-1", "shop-1", "39.90")
    engine.handle(RateCase(case_id=case_id, score=5, at=at(days=4)))
    return case_id, signed


def refused(store_url: str, private: Path) -> dict[str, Any]:
    """`checkpoint` refusing to sign: exit 3 and the error it names, as JSON."""
    result = invoke(store_url, "checkpoint", "--signing-key", str(private), "--json", code=3)
    assert result.stderr.startswith("error: nothing signed: ")
    error: dict[str, Any] = json.loads(result.stdout)["error"]
    assert error["code"] == "not_allowed"
    return error


def forge_refund(engine: Engine, case_id: str, *, index: bool) -> int:
    """A second refund appended to a refunded case, sealed onto its chain with the engine's
    own hashing, as someone who can write the database (not sign) can; with ``index`` the
    case index is moved on to it too. Its position."""
    events = poison.stored(engine.store, case_id)
    refund = json.loads(poison.refund_of(engine.store, case_id)["state"])
    last = events[-1]
    version = last["version"] + 1
    refund["command_id"] = "forged-1"
    topic = get_topic(CaseRefunded)
    refund["hash"] = chain_hash(
        json.loads(last["state"])["hash"], uuid.UUID(case_id), version, topic, refund
    )
    engine.store.recorder.insert_events(
        [StoredEvent(uuid.UUID(case_id), version, topic, stored_form(refund))]
    )
    if index:
        engine.store.execute(
            "UPDATE {t}aftersales_cases SET version = ? WHERE case_id = ?", (version, case_id)
        )
    position = engine.store.position_of(uuid.UUID(case_id), version)
    assert position is not None
    return position


def test_signing_refuses_an_event_edited_since_the_last_checkpoint(
    engine: Engine, store_url: str, keys: tuple[Path, Path]
) -> None:
    private, _ = keys
    case_id, signed = signed_then_refunded(engine, store_url, private)
    refund = poison.refund_of(engine.store, case_id)
    poison.more_money(engine.store, case_id)  # 39.90 made 3990.00, the chain left as it was
    error = refused(store_url, private)
    assert (error["position"], error["version"]) == (refund["position"], refund["version"])
    [problem] = error["problems"]
    assert problem["aggregate"] == f"case {case_id}" and problem["event"] == "CaseRefunded"
    assert problem["why"].startswith("hash does not match its content")
    assert [h.size for h in Tree(engine.store).heads()] == [signed]


def test_signing_refuses_a_case_whose_last_event_was_deleted_since(
    engine: Engine, store_url: str, keys: tuple[Path, Path]
) -> None:
    private, _ = keys
    case_id, signed = signed_then_refunded(engine, store_url, private)
    *kept, rated = poison.stored(engine.store, case_id)
    sql(
        store_url,
        "DELETE FROM {events} WHERE originator_id = ? AND originator_version = ?",
        (row_id(store_url, case_id), rated["version"]),
    )
    # The chain that is left holds: only the index, written with every event, knows, and
    # every read of the case compares the two.
    poisoned: dict[uuid.UUID, Poisoned] = {}
    assert engine.store.load_many([uuid.UUID(case_id)], poisoned) == {}
    assert "missing from the end" in poisoned[uuid.UUID(case_id)].why
    error = refused(store_url, private)
    [problem] = error["problems"]
    assert (problem["position"], problem["version"]) == (kept[-1]["position"], kept[-1]["version"])
    assert problem["aggregate"] == f"case {case_id}"
    assert problem["why"].startswith(f"the case index says version {rated['version']}")
    assert "missing from the end (deleted?)" in problem["why"]
    assert [h.size for h in Tree(engine.store).heads()] == [signed]


def test_signing_refuses_an_event_the_case_index_never_knew(
    engine: Engine, store_url: str, keys: tuple[Path, Path]
) -> None:
    private, _ = keys
    case_id, signed = signed_then_refunded(engine, store_url, private)
    forged = forge_refund(engine, case_id, index=False)
    error = refused(store_url, private)
    assert error["position"] == forged
    assert "not written by the engine" in error["problems"][0]["why"]
    assert [h.size for h in Tree(engine.store).heads()] == [signed]


def test_signing_refuses_a_forged_refund_sealed_onto_a_refunded_case(
    engine: Engine, store_url: str, keys: tuple[Path, Path]
) -> None:
    """The chain re-sealed and the index moved on: only the rules (a refunded case is not
    refunded again) tell this event from one the engine recorded."""
    private, _ = keys
    case_id, signed = signed_then_refunded(engine, store_url, private)
    forged = forge_refund(engine, case_id, index=True)
    error = refused(store_url, private)
    assert error["position"] == forged
    assert [h.size for h in Tree(engine.store).heads()] == [signed]


# Verifying from where the last verification stopped ----------------------------------------------


def verify(store_url: str, public: Path, *args: str, code: int = 0) -> dict[str, Any]:
    result = invoke(
        store_url, "checkpoint", "verify", "--public-key", str(public), "--json", *args, code=code
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_verify_reads_the_events_since_the_checkpoint_it_last_verified(
    engine: Engine, store_url: str, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    generate(engine.store, 300, prefix="A-")
    first = checkpoint(store_url, private)["checkpoint"]
    # Nothing verified yet: from position 1.
    report = verify(store_url, public)
    assert report["verified"] and report["previously_verified"] is None
    assert (report["from"], report["to"]) == (1, first["position"])
    assert report["events_read"] == first["events"] and report["unsigned_events"] == 0

    generate(engine.store, 300, prefix="B-", seed=8)
    second = checkpoint(store_url, private)["checkpoint"]
    unsigned = generate(engine.store, 50, prefix="C-", seed=9)
    head = engine.store.recorder.max_notification_id()
    report = verify(store_url, public)
    assert report["verified"] and report["previously_verified"] == first["position"]
    assert (report["from"], report["to"]) == (first["position"] + 1, head)
    assert report["events_read"] == second["events"] - first["events"] + unsigned
    assert report["unsigned_events"] == unsigned
    # Verified up to the second checkpoint now: only what is not yet signed is read again.
    report = verify(store_url, public)
    assert report["from"] == second["position"] + 1 and report["events_read"] == unsigned
    full = verify(store_url, public, "--full")
    assert (full["from"], full["to"], full["events_read"]) == (1, head, second["events"] + unsigned)
    text = invoke(store_url, "checkpoint", "verify", "--public-key", str(public)).stdout
    assert f"positions {second['position'] + 1} to {head} checked, {unsigned} event(s)" in text

    # An event under the head verified last is not read again by default; --full names it.
    [second_event] = read_rows(engine.store, 1, 2, 1, None)
    poison.overwrite(engine.store, 2, second_event.state.replace(b'":', b'": ', 1))
    assert verify(store_url, public)["verified"]
    caught = verify(store_url, public, "--full", code=3)
    assert any(p.startswith("position 2 (") and "(changed)" in p for p in caught["problems"])
    # A size recorded as verified that no checkpoint signed counts for nothing.
    Tree(engine.store).record_verified(second["position"] - 1, NOW, first["key_id"])
    Tree(engine.store).write(
        lambda execute: execute(
            "DELETE FROM {t}aftersales_checkpoint_verified WHERE size <> ?",
            (second["position"] - 1,),
        )
    )
    assert verify(store_url, public, code=3)["from"] == 1


def test_default_verify_names_an_event_changed_since_the_checkpoint_it_last_verified(
    engine: Engine, store_url: str, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    case_id, signed = signed_then_refunded(engine, store_url, private)
    assert verify(store_url, public)["verified"]
    checkpoint(store_url, private)  # signs the case's events
    refund = poison.refund_of(engine.store, case_id)
    poison.more_money(engine.store, case_id)
    report = verify(store_url, public, code=3)
    assert report["from"] == signed + 1 and not report["verified"]
    assert f"position {refund['position']} ({case_id} version {refund['version']}): not the " in (
        "\n".join(report["problems"])
    )
    text = invoke(store_url, "checkpoint", "verify", "--public-key", str(public), code=3)
    assert "not the event that was signed (changed)" in text.stdout
    assert verify(store_url, public, code=3)["previously_verified"] == signed  # not moved on


def test_default_verify_names_an_event_deleted_since_the_checkpoint_it_last_verified(
    engine: Engine, store_url: str, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    case_id, signed = signed_then_refunded(engine, store_url, private)
    assert verify(store_url, public)["verified"]
    checkpoint(store_url, private)
    rated = poison.stored(engine.store, case_id)[-1]
    sql(
        store_url,
        "DELETE FROM {events} WHERE originator_id = ? AND originator_version = ?",
        (row_id(store_url, case_id), rated["version"]),
    )
    report = verify(store_url, public, code=3)
    assert report["from"] == signed + 1
    gone = f"position {rated['position']}: the event signed there is gone (deleted)"
    assert gone in report["problems"]


TAMPERING = ("edited", "deleted", "forged")


@pytest.mark.parametrize("tampering", TAMPERING)
def test_default_verify_names_what_fails_after_the_latest_checkpoint(
    engine: Engine, store_url: str, keys: tuple[Path, Path], tampering: str
) -> None:
    private, public = keys
    case_id, signed = signed_then_refunded(engine, store_url, private)
    assert verify(store_url, public)["verified"]  # up to the checkpoint: only the case is after
    events = poison.stored(engine.store, case_id)
    if tampering == "edited":
        poison.more_money(engine.store, case_id)
        named = poison.refund_of(engine.store, case_id)["position"]
        why = "hash does not match its content"
    elif tampering == "deleted":
        sql(
            store_url,
            "DELETE FROM {events} WHERE originator_id = ? AND originator_version = ?",
            (row_id(store_url, case_id), events[-1]["version"]),
        )
        named = events[-2]["position"]
        why = f"the case index says version {events[-1]['version']}"
    else:
        named = forge_refund(engine, case_id, index=False)
        why = "not written by the engine"
    report = verify(store_url, public, code=3)
    assert report["from"] == signed + 1 and not report["verified"]
    [problem] = report["problems"]
    assert problem.startswith(f"position {named} (") and why in problem
    assert problem.endswith("(not yet signed)")
    refused(store_url, private)  # and signing says the same
