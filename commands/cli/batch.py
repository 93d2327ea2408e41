"""`aftersales batch FILE|-`: one action per JSON line, one result line each.

Each line is a typed command (``engine.application.lines.from_line``): "action" names it, every
other key is one of its fields, checked by the same model as the command line's options, with the
same messages. Every line runs through ``Engine.handle``, in this process, against one engine.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import IO, Any

import click
from eventsourcing.persistence import PersistenceError

from aftersales.commands.cli.options import source_argument, source_path
from aftersales.commands.cli.output import State, exit_code, fail_with, scrub, to_json
from aftersales.engine.access.actor_checks import ActorCheck
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.lines import json_lines, parse_line
from aftersales.engine.domain.errors import AftersalesError


def run_line(engine: Engine, text: str | None, check: ActorCheck | None = None) -> Any:
    """Run one line; a refusal raises AftersalesError (the store failing: its own code). With
    a check, a line's "by" must name a principal who may take its action (``ActorCheck``)."""
    try:
        command = parse_line(text)
        return engine.handle(check(command) if check else command)
    except PersistenceError as exc:
        raise StoreFailed(" ".join(str(exc).split())) from None


class StoreFailed(AftersalesError):
    code = "store_unavailable"


@click.command("batch")
@source_argument
@click.option("--stop-on-error", is_flag=True, help="Stop at the first line that fails.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Result lines are JSON always; with --json a run that cannot start says why in JSON too.",
)
@click.pass_context
def batch(ctx: click.Context, /, source: IO[str], stop_on_error: bool, as_json: bool) -> None:
    """Run one action per JSON line of FILE (or - for stdin); print one result line each."""
    state: State = ctx.find_object(State)  # type: ignore[assignment]
    try:
        engine = state.engine()
        check = ActorCheck(engine)
    except AftersalesError as exc:
        fail_with(exc, as_json=as_json)
    except PersistenceError as exc:
        fail_with(StoreFailed(" ".join(str(exc).split())), as_json=as_json)
    counts: Counter[str] = Counter()
    first_failure = 0
    show_progress = sys.stderr.isatty() and source_path(source) is not None
    total = 0
    if show_progress:
        total = sum(1 for _ in source)
        source.seek(0)
    with click.progressbar(
        length=total, file=sys.stderr, label="batch", hidden=not show_progress
    ) as bar:
        for number, text in json_lines(source):
            try:
                result = run_line(engine, text, check)
                line: dict[str, Any] = {"line": number, "ok": True, "result": result}
                counts["ok"] += 1
            except AftersalesError as exc:
                line = {
                    "line": number,
                    "ok": False,
                    "error": {**exc.to_json(), "message": scrub(exc.message)},
                }
                counts[exc.code] += 1
                first_failure = first_failure or exit_code(exc.code)
            click.echo(to_json(line))
            bar.update(1)
            if stop_on_error and not line["ok"]:
                break
    failed = sum(n for code, n in counts.items() if code != "ok")
    detail = ", ".join(f"{code} {n}" for code, n in sorted(counts.items()) if code != "ok")
    click.echo(
        f"batch: {counts['ok'] + failed} lines, {counts['ok']} ok, {failed} failed"
        + (f" ({detail})" if detail else ""),
        err=True,
    )
    if first_failure:
        sys.exit(first_failure)
