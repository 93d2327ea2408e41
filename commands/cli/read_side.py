"""Reads from a standby on the command line: ``--read-store URL`` (``AFTERSALES_READ_STORE``) and
``--read-after TOKEN`` on the reading commands, ``--read-store`` on the actions (which then say
where they landed, ``read_after``). Without a read store, a command runs as it always has.

A read from the read store prints what it reflects on stderr, and a JSON object answer carries
it as ``read`` (``engine/storage/replica.py``: ``standing``). With ``--read-after``, the read
waits for the standby to replay that far, else reads the primary, and says which it did."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from aftersales.engine.application.handler import Engine
from aftersales.engine.storage.replica import (
    ReadStore,
    check_token,
    described,
    landed_at,
    read_wait,
)

if TYPE_CHECKING:  # the State is output.py's, which runs the commands through here
    from aftersales.commands.cli.output import State

F = TypeVar("F", bound=Callable[..., Any])

READ_STORE_HELP = (
    "Read from this PostgreSQL standby of --store (its own host:port, or the cluster's URL "
    "with target_session_attrs=prefer-standby); the answer says the log position it reflects "
    "and how far behind the primary that is (default: $AFTERSALES_READ_STORE, else --store)."
)


def _state(ctx: click.Context) -> State | None:
    """The group's State (``ctx.obj``: commands/cli/main.py), if the group ran."""
    found: State | None = ctx.obj
    return found


def _keep_read_store(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    state = _state(ctx)
    if state is not None and value:
        state.read_from(value)


def _keep_read_after(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    state = _state(ctx)
    if state is not None and value:
        state.read_after = value


def read_store_option(help_text: str = READ_STORE_HELP) -> click.Option:
    return click.Option(
        ["--read-store"],
        envvar="AFTERSALES_READ_STORE",
        default=None,
        metavar="URL",
        expose_value=False,
        callback=_keep_read_store,
        help=help_text,
    )


def read_after_option() -> click.Option:
    return click.Option(
        ["--read-after"],
        default=None,
        metavar="TOKEN",
        expose_value=False,
        callback=_keep_read_after,
        help="Show at least what the action that printed this read_after did: wait (up to "
        "$AFTERSALES_READ_WAIT, 2 s) for the read store to replay it, else read --store.",
    )


ACTION_READ_STORE_HELP = (
    "Where this deployment's reads go (default: $AFTERSALES_READ_STORE): the action still "
    "goes to --store, and prints where it landed (read_after) for a read's --read-after."
)


def read_options(f: F) -> F:
    """--read-store and --read-after on a reading command."""
    params = getattr(f, "__click_params__", None)
    if params is None:
        params = f.__click_params__ = []  # type: ignore[attr-defined]
    params += [read_after_option(), read_store_option()]
    return f


def read_params(reads: bool) -> list[click.Parameter]:
    """The same options for a command built by hand (``commands/cli/actions.py``): a read's
    two, or an action's --read-store."""
    if reads:
        return [read_store_option(), read_after_option()]
    return [read_store_option(ACTION_READ_STORE_HELP)]


def reader(state: State) -> tuple[ReadStore, Engine]:
    """The read store and an engine on it, opened once a process."""
    if state.reader is None:
        primary = state.engine(create=False)
        store = ReadStore(state.read_store or "", primary.store)
        state.reader = (store, Engine(store.store, policy=primary.policy, clock=primary.clock))
    return state.reader


def run_on_reads(state: State, call: Callable[[Engine], Any], creates: bool) -> Any:
    """Run a command's work where it belongs: with no read store, on --store as always; an
    action on --store, saying where it landed; a read on the read store (after waiting for
    --read-after's token, else on --store), saying what it reflects."""
    if not state.read_store:
        return call(state.engine(create=creates))
    if creates:
        engine = state.engine(create=True)
        result = call(engine)
        token = landed_at(engine.store)
        if token is not None and isinstance(result, dict):
            result = {**result, "read_after": token}
        return result
    engine, standing = read_engine(state)
    return with_standing(call(engine), standing)


def read_engine(state: State) -> tuple[Engine, dict[str, Any]]:
    """The engine a read goes to, and what it will reflect (said on stderr)."""
    store, on_standby = reader(state)
    after = check_token(state.read_after) if state.read_after else None
    replayed, waited = True, None
    started = time.monotonic()
    try:
        if after is not None:
            replayed = store.wait(after, read_wait())
            waited = time.monotonic() - started
        standing = store.standing(replayed, after, waited)
    except Exception as exc:  # the standby failed: the primary answers
        replayed, standing = False, store.failed_over(exc, after, waited)
    click.echo(described(standing), err=True)
    return (on_standby if replayed else state.engine(create=False)), standing


def with_standing(result: Any, standing: dict[str, Any]) -> Any:
    """A JSON object answer with what it reflects (``read``); a list as it is (stderr says)."""
    return {**result, "read": standing} if isinstance(result, dict) else result
