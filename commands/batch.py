"""`aftersales batch FILE|-`: one action per JSON line, one result line each.

Each line is turned into the arguments of the command it names and run through that same
command, in this process, against one engine: every action and option of the command line has
its JSON form, checked by the same code.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from typing import IO, Any

import click
from eventsourcing.persistence import PersistenceError

from commands.output import State, to_json
from engine.errors import AftersalesError

# What click (8.2 and later) gives as the default of a parameter that has none.
_NO_DEFAULT = getattr(click.core, "UNSET", None)

# Commands a batch may not run: they are not single actions or reads.
NOT_IN_BATCH = {"batch", "demo", "scheduler", "import-history", "order import"}


class LineError(AftersalesError):
    """Why one line failed, with the error code and exit code of the command it named."""

    def __init__(self, code: str, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.code = code
        self.exit_code = exit_code


def _commands(root: click.Group) -> dict[str, click.Command]:
    """Every runnable command by its path: "case approve", "order place", "tick", ..."""
    found: dict[str, click.Command] = {}

    def walk(group: click.Group, prefix: str) -> None:
        for name, command in group.commands.items():
            path = f"{prefix}{name}"
            if isinstance(command, click.Group):
                walk(command, f"{path} ")
            elif path not in NOT_IN_BATCH:
                found[path] = command

    walk(root, "")
    return found


def _bare_words(paths: dict[str, click.Command]) -> dict[str, str]:
    """The last word of a path, where only one path ends with it ("approve" -> "case approve")."""
    words = Counter(path.split(" ")[-1] for path in paths)
    return {path.split(" ")[-1]: path for path in paths if words[path.split(" ")[-1]] == 1}


class Binding:
    """How one command's JSON keys become its parameters: positional ones by name, options by
    long name, each value converted and checked by the parameter's own click type. (Building
    an argv and parsing it again cost a batch line more than the action itself.)"""

    def __init__(self, command: click.Command, path: str) -> None:
        self.command = command
        self.path = path
        self.arguments = [p for p in command.params if isinstance(p, click.Argument)]
        self.options: dict[str, click.Option] = {
            opt.lstrip("-").replace("-", "_"): param
            for param in command.params
            if isinstance(param, click.Option)
            for opt in param.opts
            if opt.startswith("--")
        }
        self.options.pop("json", None)
        self.defaults: dict[str, Any] = {}

    def context(self, data: dict[str, Any], parent: click.Context) -> click.Context:
        """A context for the command with every parameter set from ``data``."""
        given: dict[str, Any] = {}
        for argument in self.arguments:
            name = argument.name or ""
            if name not in data:
                raise LineError("bad_input", f"{self.path} needs {name!r}", 2)
            given[name] = str(data.pop(name))
        for key, value in data.items():
            option = self.options.get(key)
            if option is None:
                known = ", ".join(sorted(self.options))
                raise LineError(
                    "bad_input", f"{self.path} has no option {key!r} (options: {known})", 2
                )
            raw = _raw(option, key, value)
            if raw is not None:  # null: as if not given
                given[option.name or key] = raw
        ctx = self.command.context_class(self.command, info_name=self.path, parent=parent)
        for param in self.command.params:
            name = param.name or ""
            if name in given:
                ctx.params[name] = param.type_cast_value(ctx, given[name])
                continue
            if param.required:
                raise click.MissingParameter(ctx=ctx, param=param)
            if name in self.defaults:
                ctx.params[name] = self.defaults[name]
                continue
            ctx.params[name] = value = self.default(param, ctx)
            if not callable(param.default) and not param.envvar:  # the same every line
                self.defaults[name] = value
        return ctx

    @staticmethod
    def default(param: click.Parameter, ctx: click.Context) -> Any:
        """A parameter's value when not given."""
        default = param.get_default(ctx)
        if default is None or default is _NO_DEFAULT:
            flag = isinstance(param, click.Option) and param.is_flag
            return () if param.multiple else (False if flag else None)
        return param.type_cast_value(ctx, default)


def _raw(param: click.Option, key: str, value: Any) -> Any:
    """A JSON value as the command line would have given it: text, a flag, or a list."""
    if param.is_flag:
        if not isinstance(value, bool):
            raise LineError("bad_input", f"{key!r} is a flag: true or false", 2)
        return value
    if isinstance(value, list) and not param.multiple:
        raise LineError("bad_input", f"{key!r} takes one value, not a list", 2)
    items: list[str] = []
    for item in value if isinstance(value, list) else [value]:
        if item is None:
            continue
        if isinstance(item, (dict, list, float)):
            raise LineError(
                "bad_input",
                f"{key!r} must be a string"
                + (
                    ' (money is a decimal string such as "12.50")'
                    if isinstance(item, float)
                    else ""
                ),
                2,
            )
        items.append(str(item).lower() if isinstance(item, bool) else str(item))
    if param.multiple:
        return tuple(items)
    return items[0] if items else None


def parse_line(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LineError("bad_input", f"not JSON: {exc.msg} at column {exc.colno}", 2) from None
    if not isinstance(data, dict):
        raise LineError("bad_input", 'a line must be a JSON object with an "action"', 2)
    if not isinstance(data.get("action"), str):
        raise LineError("bad_input", 'a line needs "action", e.g. "case approve"', 2)
    return data


class Runner:
    def __init__(self, ctx: click.Context) -> None:
        root = ctx.find_root()
        assert isinstance(root.command, click.Group)
        self.root = root
        self.paths = _commands(root.command)
        self.bare = _bare_words(self.paths)
        self.state: State = ctx.find_object(State)  # type: ignore[assignment]
        self.bindings: dict[str, Binding] = {}

    def resolve(self, action: str) -> tuple[str, click.Command]:
        words = " ".join(action.replace("_", "-").split())
        path = words if words in self.paths else self.bare.get(words)
        if path is None:
            matches = sorted(p for p in self.paths if p.split(" ")[-1] == words)
            if matches:
                raise LineError(
                    "bad_input", f"ambiguous action {action!r}: say {' or '.join(matches)}", 2
                )
            raise LineError("bad_input", f"unknown action {action!r}", 2)
        return path, self.paths[path]

    def run(self, data: dict[str, Any]) -> Any:
        path, command = self.resolve(data.pop("action"))
        binding = self.bindings.get(path)
        if binding is None:
            binding = self.bindings[path] = Binding(command, path)
        results: list[Any] = []
        self.state.collect = results.append
        try:
            with binding.context(data, self.root) as sub:
                command.invoke(sub)
        except AftersalesError as exc:
            raise LineError(exc.code, exc.message, exc.exit_code) from None
        except click.ClickException as exc:
            raise LineError("bad_input", exc.format_message(), exc.exit_code) from None
        except PersistenceError as exc:
            raise LineError("store_unavailable", " ".join(str(exc).split()), 1) from None
        finally:
            self.state.collect = None
        return results[0] if results else None


def _lines(stream: IO[str]) -> Iterator[tuple[int, str]]:
    for number, text in enumerate(stream, start=1):
        if text.strip():
            yield number, text


@click.command("batch")
@click.argument("source", type=click.File("r", encoding="utf-8"))
@click.option("--stop-on-error", is_flag=True, help="Stop at the first line that fails.")
@click.pass_context
def batch(ctx: click.Context, /, source: IO[str], stop_on_error: bool) -> None:
    """Run one action per JSON line of FILE (or - for stdin); print one result line each."""
    runner = Runner(ctx)
    counts: Counter[str] = Counter()
    first_failure = 0
    show_progress = sys.stderr.isatty() and source is not sys.stdin
    total = 0
    if show_progress:
        total = sum(1 for _ in source)
        source.seek(0)
    with click.progressbar(
        length=total, file=sys.stderr, label="batch", hidden=not show_progress
    ) as bar:
        for number, text in _lines(source):
            try:
                result = runner.run(parse_line(text))
                line: dict[str, Any] = {"line": number, "ok": True, "result": result}
                counts["ok"] += 1
            except LineError as exc:
                line = {
                    "line": number,
                    "ok": False,
                    "error": {"code": exc.code, "message": exc.message},
                }
                counts[exc.code] += 1
                first_failure = first_failure or exc.exit_code
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
