"""Click commands derived from the typed commands of ``engine/application/requests.py``.

Each model field becomes an argument (``arguments``) or an option named after its key
(``--return-address``, ``--for``, ``--line``): repeatable for a tuple, a flag for a bool. Every
value reaches the model as the text typed, so the command line refuses exactly what a `batch`
line or an HTTP body refuses, with the same message.
"""

from __future__ import annotations

import importlib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import click
from pydantic.fields import FieldInfo

from aftersales.commands.cli.output import RENDERERS, emit
from aftersales.commands.cli.read_side import read_params
from aftersales.engine.access.actor_checks import ActorCheck
from aftersales.engine.application.fields import field_choices, key_of
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import Action, Command, ListCases


def _inner(annotation: Any) -> Any:
    """The type inside Annotated[...] and Optional[...]."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    return annotation


def _enum_words(field: FieldInfo) -> list[str] | None:
    chosen = field_choices(field)
    if chosen is not None:
        return chosen
    kind = _inner(field.annotation)
    if isinstance(kind, type) and issubclass(kind, Enum):
        return [str(m.value) for m in kind]
    return None


# How a value is shown in --help, by the field's type.
METAVARS: dict[Any, str] = {int: "N", datetime: "TIME", Decimal: "AMOUNT"}


def _scalar(kind: Any) -> Any:
    """The type of one value: a tuple's items, else the type itself."""
    if typing.get_origin(kind) is tuple:
        return _inner(typing.get_args(kind)[0])
    return kind


def _parameter(name: str, field: FieldInfo, positional: bool) -> click.Parameter:
    key = key_of(name)
    kind = _inner(field.annotation)
    if positional:
        # Not required by click: the model says what is missing, as it does for a batch line.
        return click.Argument([name], required=False, metavar=name.upper())
    help_text = field.description or ""
    words = _enum_words(field)
    if words and name != "status":
        help_text = f"{help_text} One of {', '.join(words)}.".strip()
    if field.is_required():
        help_text = f"{help_text} [required]".strip()
    elif field.default not in (None, (), False):
        shown = field.default.value if isinstance(field.default, Enum) else field.default
        help_text = f"{help_text} [default: {shown}]".strip()
    flag = f"--{key.replace('_', '-')}"
    if kind is bool:
        return click.Option([flag, name], is_flag=True, default=None, help=help_text)
    multiple = typing.get_origin(kind) is tuple
    metavar = "|".join(words) if words and len(words) <= 6 else METAVARS.get(_scalar(kind))
    return click.Option(
        [flag, name], multiple=multiple, default=None, help=help_text, metavar=metavar
    )


# What --quiet prints, by what a command shows: the ids alone.
QUIET: dict[str, Callable[[Any], str]] = {
    "case": lambda case: str(case["case_id"]),
    "cases": lambda rows: "\n".join(str(row["case_id"]) for row in rows),
    "order": lambda order: str(order["order_id"]),
}


def click_command(kind: type[Command]) -> click.Command:
    """A click command for a typed command: parse, hand to the engine, print."""
    params: list[click.Parameter] = [
        _parameter(name, field, name in kind.arguments)
        for name, field in sorted(
            kind.model_fields.items(),
            key=lambda item: (item[0] not in kind.arguments, item[0] in Action.model_fields),
        )
    ]
    params.append(
        click.Option(
            ["--json", "as_json"], is_flag=True, help="Print exactly one JSON value on stdout."
        )
    )
    params += read_params(kind.reads_only)
    quiet = QUIET.get(kind.shows)
    if quiet is not None:
        params.append(
            click.Option(
                ["-q", "--quiet"],
                is_flag=True,
                help="Print only the id (for scripts: CASE=$(aftersales case open ... -q)).",
            )
        )

    @click.pass_context
    def callback(ctx: click.Context, /, as_json: bool, quiet: bool = False, **given: Any) -> None:
        if quiet and as_json:
            raise click.UsageError("give --json or --quiet, not both")
        values = {k: v for k, v in given.items() if v is not None and v != ()}
        emit(
            ctx,
            as_json,
            lambda engine: engine.handle(
                staff_ready(
                    engine, ActorCheck(engine)(kind.parse(with_whole_case_id(engine, values)))
                )
            ),
            QUIET[kind.shows] if quiet else RENDERERS[kind.shows],
            creates=not kind.reads_only,
        )

    return click.Command(
        kind.name.split(" ")[-1],
        callback=callback,
        params=params,
        help=(kind.__doc__ or "").strip(),
        short_help=(kind.__doc__ or "").strip().split("\n")[0],
    )


class ActionGroup(click.Group):
    """A group of the typed commands whose names start with ``<group name> ``, each built into
    a click command only when it is asked for: a process runs one of them, and building all
    twenty would be a fiftieth of its start."""

    def __init__(
        self,
        name: str,
        kinds: Iterable[type[Command]],
        others: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.kinds = {
            k.name.removeprefix(f"{name} "): k for k in kinds if k.name.startswith(f"{name} ")
        }
        # The group's other commands by name: "module:attribute", imported when asked for (as
        # the top-level commands are), so that running one action does not load, say, the bulk
        # import's machinery.
        self.others = dict(others or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.kinds, *self.others})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.kinds:
            self.add_command(click_command(self.kinds[cmd_name]))
        elif cmd_name not in self.commands and cmd_name in self.others:
            module_name, _, attr = self.others[cmd_name].partition(":")
            command = getattr(importlib.import_module(module_name), attr)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


def with_whole_case_id(engine: Engine, values: dict[str, Any]) -> dict[str, Any]:
    """A person may name a case by the start of its id, as git takes a short commit id."""
    if isinstance(values.get("case_id"), str):
        return {**values, "case_id": engine.complete_case_id(values["case_id"])}
    return values


def staff_ready(engine: Engine, command: Command) -> Command:
    """A list by member reads the staff projection: caught up first (imported only then, so
    the other commands start as fast as before)."""
    if isinstance(command, ListCases) and command.assignee:
        from aftersales.projections.staff_reads import catch_up_staff

        catch_up_staff(engine.store)
    return command
