"""`aftersales demo`: the article's cases, end to end, on a fresh SQLite store.

The stories are data (``stories.py``); ``play`` acts them out, one step after another, on the
engine, and checks each step leaves its case in the status the story says.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from aftersales.commands.cli.demo.stories import (
    REFUSED,
    STORIES,
    THE_CASE,
    Step,
    Story,
    Tick,
)
from aftersales.commands.cli.options import FilePath, json_option
from aftersales.commands.cli.output import exit_code, table, to_json
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import OpenCase
from aftersales.engine.application.tick import tick
from aftersales.engine.domain.errors import AftersalesError
from aftersales.projections.ledger import TOTALS, ledger
from aftersales.projections.registry import VIEWS
from aftersales.projections.runner import Projector


@dataclass
class Narrative:
    """What the demo tells: each step's time, who acted, what, and the status after; and each
    story's case, by the story's title."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    cases: dict[str, str] = field(default_factory=dict)


def act(engine: Engine, title: str, step: Step, arguments: dict[str, Any]) -> dict[str, Any]:
    """One person's (or the order system's) action, and what it left the case or order in."""
    result = engine.handle(step.action(**arguments))
    return {
        "story": title,
        "who": step.actor,
        "did": step.narration,
        "status": result.get("status"),
        "case_id": result.get("case_id"),
        "order_id": result.get("order_id"),
        "refunded_amount": result.get("refunded_amount"),
        "due_at": result.get("due_at"),
        "due_action": result.get("due_action"),
    }


def refusal(engine: Engine, title: str, step: Step, arguments: dict[str, Any]) -> dict[str, Any]:
    """An action the rules refuse: what they said, and the exit code the command line gives."""
    try:
        engine.handle(step.action(**arguments))
    except AftersalesError as exc:
        return {
            "story": title,
            "who": step.actor,
            "refused": exc.message,
            "exit_code": exit_code(exc.code),
        }
    raise AssertionError(f"{title}: expected a refusal")  # pragma: no cover


def clock(engine: Engine, title: str, step: Step, case_id: str) -> dict[str, Any]:
    """The clock at the step's ``now``: fire whatever fell due, and show the case afterwards."""
    now = str(step.arguments["now"])
    fired = tick(engine, datetime.fromisoformat(now)).fired
    case = engine.get_case(case_id, at=datetime.fromisoformat(now))
    what = ", ".join(d.action.value for d in fired) or "nothing due yet"
    return {
        "story": title,
        "who": step.actor,
        "did": f"tick at {now[:10]} {now[11:16]}: {what}",
        "status": case["status"],
        "case_id": case_id,
        "order_id": case["order_id"],
        "refunded_amount": case["refunded_amount"],
        "due_at": case["due_at"],
        "due_action": case["due_action"],
        "fired": [d.to_json() for d in fired],
    }


def play(engine: Engine, stories: tuple[Story, ...] = STORIES) -> Narrative:
    """Play each story's steps in order, checking each leaves its case as the story says."""
    narrative = Narrative()
    for story in stories:
        case_id = ""  # the story's case: the one its latest OpenCase opened
        for step in story.steps:
            arguments = {k: case_id if v == THE_CASE else v for k, v in step.arguments.items()}
            if step.action is Tick:
                record = clock(engine, story.title, step, case_id)
            elif step.expect == REFUSED:
                record = refusal(engine, story.title, step, arguments)
            else:
                record = act(engine, story.title, step, arguments)
                if step.action is OpenCase:
                    case_id = narrative.cases[story.title] = record["case_id"]
            status = REFUSED if "refused" in record else record["status"]
            if status != step.expect:
                raise AssertionError(
                    f"{story.title}: {step.actor} left the case {status}, not {step.expect}"
                )
            narrative.steps.append(record)
    return narrative


def render(story: Narrative, path: Path, ledger_rows: list[dict[str, Any]]) -> str:
    lines = [f"aftersales demo: a fresh store at {path}", ""]
    current = None
    for step in story.steps:
        if step["story"] != current:
            current = step["story"]
            lines.append(f"== {current}")
        if "refused" in step:
            lines.append(
                f"  {step['who']:<13} refused (exit {step['exit_code']}): {step['refused']}"
            )
            continue
        status = step["status"] or "-"
        extra = f"  due {step['due_at']} -> {step['due_action']}" if step["due_at"] else ""
        money = (
            f"  refunded {step['refunded_amount']}"
            if step.get("refunded_amount") not in (None, "0.00")
            else ""
        )
        lines.append(f"  {step['who']:<13} {step['did']:<48} {status}{money}{extra}")
    lines += ["", "The merchants' money (the ledger projection):"]
    lines += ["  " + line for line in table(ledger_rows, ["merchant_id", *TOTALS]).splitlines()]
    lines += ["", "Look closer:"]
    lines += [
        f"  aftersales --store sqlite:///{path} case list",
        f"  aftersales --store sqlite:///{path} case show {story.cases['phone case colour difference']}",  # noqa: E501
    ]
    return "\n".join(lines)


@click.command("demo")
@click.option(
    "--store-path",
    type=FilePath(dir_okay=False, path_type=Path),
    default=None,
    help="Where to create the demo's SQLite file (must not exist yet).",
)
@json_option
def demo(store_path: Path | None, as_json: bool) -> None:
    """Play the article's cases end to end on a fresh SQLite store and show what happened."""
    if store_path is None:
        store_path = Path(tempfile.mkdtemp(prefix="aftersales-demo-")) / "demo.db"
    elif store_path.exists():
        raise click.UsageError(f"{store_path} exists already; the demo wants a fresh store")
    path = store_path.resolve()
    with Engine(f"sqlite:///{path}") as engine:
        story = play(engine)
        finals = {title: engine.get_case(cid) for title, cid in story.cases.items()}
        Projector(engine.store).catch_up(VIEWS)
        money = ledger(engine.store, None, None, None)
    if as_json:
        click.echo(
            to_json(
                {
                    "store": f"sqlite:///{path}",
                    "steps": story.steps,
                    "cases": finals,
                    "ledger": money,
                }
            )
        )
    else:
        click.echo(render(story, path, money))
