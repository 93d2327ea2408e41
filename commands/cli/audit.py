"""`aftersales audit CASE`: a case's history replayed from its events, verified, exported."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
from eventsourcing.persistence import PersistenceError

from aftersales.commands.cli.checkpoint import public_key_option, read_public_key
from aftersales.commands.cli.display import for_people
from aftersales.commands.cli.options import FilePath, json_option
from aftersales.commands.cli.output import State, _cell, _one_line, fail, fail_with, table, to_json
from aftersales.commands.cli.read_side import read_engine, read_options
from aftersales.engine.domain.errors import AftersalesError, BadInput
from aftersales.engine.domain.limits import MAX_VERSION
from aftersales.engine.domain.values import parse_time
from aftersales.engine.integrity.anchors import anchor, audited_events
from aftersales.engine.integrity.audit_bundle import audit_case, bundle, bundle_bytes
from aftersales.engine.integrity.audit_checks import Audit
from aftersales.engine.integrity.checkpoint_verify import bundle_section
from aftersales.engine.integrity.quarantine_records import list_quarantine

NOT_VERIFIED = 3


@click.command("audit")
@click.argument("case_id")
@click.option("--as-of", "as_of", default=None, help="The case as it stood at this time.")
@click.option(
    "--version",
    "version",
    type=click.IntRange(1, MAX_VERSION),
    default=None,
    help="The case as of this event version.",
)
@click.option(
    "--verify", is_flag=True, help="Exit 3, listing the problems, unless the history verifies."
)
@click.option(
    "--export",
    "export_path",
    type=FilePath(dir_okay=False, path_type=Path),
    default=None,
    help="Write a dispute bundle (events as stored, policy, states, and the latest "
    "checkpoint's signed head with a proof for each event it covers) to this file.",
)
@public_key_option
@read_options
@json_option
@click.pass_context
def audit(
    ctx: click.Context,
    /,
    case_id: str,
    as_of: str | None,
    version: int | None,
    verify: bool,
    export_path: Path | None,
    public_key: Path | None,
    as_json: bool,
) -> None:
    """Replay a case from its events: who did what when, the state, and whether it verifies."""
    state: State = ctx.find_object(State)  # type: ignore[assignment]
    try:
        zone = state.zone()
        when = parse_time(as_of, "--as-of") if as_of is not None else None
        if when is not None and version is not None:
            raise BadInput("give --as-of or --version, not both")
        engine, standing = (
            read_engine(state) if state.read_store else (state.engine(create=False), None)
        )
        result = audit_case(
            engine.store,
            engine.complete_case_id(case_id),
            as_of=when,
            version=version,
            with_states=export_path is not None,
        )
        anchor(engine.store, result, read_public_key(public_key))
        if export_path is not None:
            content = bundle(result, engine.policy, engine.clock())
            section = bundle_section(engine.store, audited_events(result))
            if section is not None:
                content["checkpoint"] = section
            _write(export_path, bundle_bytes(content))
        quarantined = list_quarantine(engine.store, result.case_id)
    except AftersalesError as exc:
        fail_with(exc, as_json)
    except PersistenceError as exc:
        fail("store_unavailable", f"the store failed: {_one_line(exc)}", 1, as_json)
    except OSError as exc:
        fail("bad_input", f"cannot write {export_path}: {_one_line(exc)}", 2, as_json)
    report = result.to_json()
    report["quarantined"] = quarantined
    if standing is not None:
        report["read"] = standing
    if as_json:
        click.echo(to_json(report))
    else:
        click.echo(render_audit(result, for_people(report, zone)))
        if export_path is not None:
            click.echo(f"dispute bundle written to {export_path}")
    if verify and not result.verified:
        click.echo(
            f"error: case {result.case_id} does not verify: {len(result.problems)} problem(s)",
            err=True,
        )
        sys.exit(NOT_VERIFIED)


def _write(path: Path, data: bytes) -> None:
    """Write whole or not at all: a half-written bundle would not verify."""
    folder = path.resolve().parent
    fd, tmp = tempfile.mkstemp(prefix=".bundle-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # Readable by its owner alone, whatever the umask: it holds the parties' ids, their
        # messages and the money; the owner hands it over as they decide.
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _details(row: dict[str, Any]) -> str:
    if row["data"] is None:
        return f"UNREADABLE: {row.get('unreadable')}"
    skip = {"order_ref", "order_delivered_at", "follows"}
    parts = [
        f"{k}={_cell(v)}"
        for k, v in row["data"].items()
        if v not in (None, [], "") and k not in skip
    ]
    if row["due"]:
        due = row["due"]
        parts.append(f"due={due['action']}@{due['due_at']} ({due['policy_version']})")
    return "  ".join(parts)


def render_audit(result: Audit, report: dict[str, Any]) -> str:
    rows = [
        {
            "v": r["version"],
            "occurred": r["occurred_at"],
            "recorded": r["recorded_at"],
            "actor": f"{r['actor']['role']}:{r['actor']['id']}" if r["actor"] else None,
            "event": r["type"],
            "status after": r["status_after"],
            "details": _details(r),
        }
        for r in report["events"]
    ]
    state = report["state"]
    lines = [f"audit of case {report['case_id']}"]
    if state:
        lines.append(
            f"  order {state['order_id']}  merchant {state['merchant_id']}  buyer "
            f"{state['buyer_id']}  {state['type']} ({state['reason']})  asked {state['amount']}"
        )
    as_of = report.get("as_of")
    if as_of is not None:
        point = f"at {as_of['time']}" if as_of["time"] else f"at version {as_of['version']}"
        lines.append(f"  as it stood {point}: {as_of['version']} event(s)")
    lines.append(
        table(rows, ["v", "occurred", "recorded", "actor", "event", "status after", "details"])
    )
    if state:
        lines.append(
            f"state: {state['status']}  refunded {state['refunded_amount']}"
            + (f" by {state['refund_paid_by']}" if state["refund_paid_by"] else "")
            + f"  (version {state['version']})"
        )
    else:
        lines.append("state: (the case did not exist yet)")
    if as_of is not None:
        deadline = as_of["deadline"]
        if deadline:
            passed = "  (had passed, not yet fired)" if as_of["deadline_passed"] else ""
            lines.append(
                f"deadline then running: {deadline['action']} at {deadline['due_at']} "
                f"(policy {deadline['policy_version']}){passed}"
            )
        else:
            lines.append("deadline then running: none")
    elif state and state["due_at"]:
        lines.append(f"deadline running: {state['due_action']} at {state['due_at']}")
    for q in report.get("quarantined", []):
        lines.append(
            f"quarantined: version {q['version']} ({q['event']}, position {q['position']}) by "
            f"{q['decided_by']} at {q['decided_at']}: {q['reason']} (could not be used: "
            f"{q['why']})"
        )
    if result.verified:
        lines.append(f"verified: yes (head hash {report['head_hash']})")
    else:
        lines.append(f"verified: NO, {len(result.problems)} problem(s):")
        lines += [f"  [{p.check}] {p.message}" for p in result.problems]
    if result.checkpoint is not None:
        lines.append(render_anchor(result.checkpoint))
    return "\n".join(lines)


def render_anchor(check: dict[str, Any]) -> str:
    """What the latest checkpoint says of the audited events, in a line or a few."""
    head = check["checkpoint"]
    uncovered = check["uncovered"]
    if head is None:
        return f"checkpoint: {check['note']}"
    where = f"checkpoint at position {head['position']} signed {head['signed_at']}"
    if not check["checked"]:
        if check["note"]:
            return f"{where}: {check['note']}"
        return f"{where}: not checked (see the problems above)"
    if check["problems"]:
        text = f"{where}: {len(check['problems'])} event(s) or fact(s) do NOT match it"
    else:
        text = f"{where} (key {head['key_id']}): {check['covered']} event(s) proven signed"
    if uncovered:
        named = ", ".join(f"{u['aggregate']} version {u['version']}" for u in uncovered)
        text += f"; not yet covered by any checkpoint: {named}"
    return text
