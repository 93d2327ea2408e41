"""Options shared by many commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from aftersales.engine.domain.limits import UNREADABLE

F = TypeVar("F", bound=Callable[..., Any])


def json_option(f: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print exactly one JSON value on stdout."
    )(f)


def bulk_options(per_chunk: str, takes: str) -> Callable[[F], F]:
    """--chunk and --workers for the bulk paths: what one transaction holds, and how many
    processes import at once and what each takes."""

    def decorate(f: F) -> F:
        f = click.option(
            "--workers",
            type=click.IntRange(1, 16),
            default=1,
            show_default=True,
            help=f"Processes importing at once, each taking {takes} (PostgreSQL only; each "
            "holds 4 to 8 connections).",
        )(f)
        return click.option(
            "--chunk",
            type=click.IntRange(1, 100_000),
            default=2000,
            show_default=True,
            help=f"{per_chunk} per transaction.",
        )(f)

    return decorate


def _no_nul(
    param_type: click.ParamType[Any],
    value: Any,
    param: click.Parameter | None,
    ctx: click.Context | None,
) -> None:
    if isinstance(value, str) and "\x00" in value:
        param_type.fail("a file name cannot hold a NUL character", param, ctx)


class FilePath(click.Path):
    """A file's path; one no file can have (a NUL in it) is a usage error, not a crash."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        _no_nul(self, value, param, ctx)
        return super().convert(value, param, ctx)


class SourceFile(click.File):
    """A file to read (or - for standard input), refused as FilePath is."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        _no_nul(self, value, param, ctx)
        return super().convert(value, param, ctx)


def source_argument(f: F) -> F:
    """SOURCE, a file or - for standard input, read as UTF-8; a byte that is not UTF-8 is
    kept (as a lone surrogate) for the line it is on to be refused, not the whole run."""
    return click.argument("source", type=SourceFile("r", encoding="utf-8", errors=UNREADABLE))(f)


def source_path(source: IO[str]) -> Path | None:
    """The path of a SOURCE that is a regular file; None for standard input (or a pipe)."""
    name = getattr(source, "name", None)
    if isinstance(name, str) and name not in ("<stdin>", "-") and Path(name).is_file():
        return Path(name)
    return None
