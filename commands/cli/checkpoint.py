"""`aftersales checkpoint`: sign the log's Merkle tree head with a key kept outside the store."""

from __future__ import annotations

import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from eventsourcing.persistence import PersistenceError

from aftersales.commands.cli.options import FilePath, json_option
from aftersales.commands.cli.output import State, _one_line, fail, fail_with, to_json
from aftersales.engine.application.handler import Engine
from aftersales.engine.domain.errors import AftersalesError, BadInput
from aftersales.engine.integrity.checkpoint_verify import LogCheck, verify_log
from aftersales.engine.integrity.checkpoints import Taken, take_checkpoint
from aftersales.engine.integrity.signing_keys import (
    PUBLIC_KEY_ENV,
    SIGNING_KEY_ENV,
    generate_key,
    key_id,
    load_public_key,
    load_signing_key,
    public_pem,
)

NOT_VERIFIED = 3

_KEY_PATH = FilePath(dir_okay=False, path_type=Path)
F = TypeVar("F", bound=Callable[..., Any])


def _key_option(name: str, env: str, help: str) -> Callable[[F], F]:
    return click.option(
        name, type=_KEY_PATH, envvar=env, default=None, help=f"{help} (default: ${env})."
    )


signing_key_option = _key_option(
    "--signing-key",
    SIGNING_KEY_ENV,
    "The Ed25519 private key (PEM or raw 32 bytes) that signs checkpoints; keep it off the "
    "database's machine",
)
public_key_option = _key_option(
    "--public-key", PUBLIC_KEY_ENV, "The checkpoints' Ed25519 public key, PEM or raw"
)


def read_signing_key(path: Path | None) -> Ed25519PrivateKey:
    if path is None:
        raise BadInput(f"no signing key: give --signing-key FILE or set ${SIGNING_KEY_ENV}")
    key = load_signing_key(path)
    try:
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            click.echo(
                f"warning: signing key {path} can be read by others than its owner (chmod 600 it)",
                err=True,
            )
    except OSError:
        pass
    return key


def read_public_key(path: Path | None) -> Ed25519PublicKey | None:
    return load_public_key(path) if path is not None else None


def checkpoint_once(engine: Engine, key: Ed25519PrivateKey) -> Taken:
    return take_checkpoint(engine.store, key, engine.clock())


def render_taken(taken: Taken) -> str:
    head = taken.head
    if head is None:
        return "nothing to checkpoint: the log is empty"
    where = (
        f"position {head.size} ({head.events} events), root {head.root.hex()}, "
        f"signed {head.signed_at} with key {head.key_id}"
    )
    if not taken.new:
        return f"no new events since the checkpoint at {where}"
    return f"checkpoint at {where}: {taken.new_events} new event(s)"


def render_verified(result: LogCheck) -> str:
    if result.start >= result.end:
        read = f"no event after position {result.start} to check"
    else:
        read = (
            f"positions {result.start + 1} to {result.end} checked, {result.events_read} "
            "event(s) read"
        )
        if result.unsigned:
            read += f", {result.unsigned} of them not yet signed"
    if result.repaired:
        read += "; the kept tree was written again from them"
    if result.note:
        read += f"; {result.note}"
    if not result.heads:
        return f"no checkpoint has been taken; {read}"
    latest = result.heads[-1]
    return (
        f"verified: {len(result.heads)} checkpoint(s), each extending the one before; "
        f"latest at position {latest.size} ({latest.events} events); {read}"
    )


@click.group(
    "checkpoint",
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@signing_key_option
@json_option
@click.pass_context
def checkpoint_group(ctx: click.Context, /, signing_key: Path | None, as_json: bool) -> None:
    """Sign a checkpoint: the Merkle tree over every event up to the log's head, its root
    signed with an Ed25519 key the store never holds. `audit --verify --public-key` then
    proves a case's events are the ones signed. Subcommands: keygen, verify."""
    if ctx.invoked_subcommand is not None:
        return
    state: State = ctx.find_object(State)  # type: ignore[assignment]
    try:
        key = read_signing_key(signing_key)
        taken = checkpoint_once(state.engine(), key)
    except AftersalesError as exc:
        fail_with(exc, as_json)
    except PersistenceError as exc:
        fail("store_unavailable", f"the store failed: {_one_line(exc)}", 1, as_json)
    click.echo(to_json(taken.to_json()) if as_json else render_taken(taken))


@checkpoint_group.command("keygen")
@click.option(
    "--out",
    "out",
    type=_KEY_PATH,
    required=True,
    help="Where to write the private key (mode 0600); the public key goes to OUT.pub.",
)
@json_option
def keygen(out: Path, as_json: bool) -> None:
    """Make a new Ed25519 signing key: the private key to OUT (0600, never over a file), the
    public key to OUT.pub and on stdout."""
    try:
        pub_path, public = generate_key(out)
    except AftersalesError as exc:
        fail_with(exc, as_json)
    pem = public_pem(public).decode("ascii")
    if as_json:
        click.echo(
            to_json(
                {
                    "private_key": str(out),
                    "public_key": str(pub_path),
                    "key_id": key_id(public),
                    "public_pem": pem,
                }
            )
        )
        return
    click.echo(f"private key written to {out} (keep it off the database's machine)", err=True)
    click.echo(f"public key written to {pub_path}, key id {key_id(public)}", err=True)
    click.echo(pem, nl=False)


@checkpoint_group.command("verify")
@public_key_option
@click.option(
    "--full",
    is_flag=True,
    help="Read every event from position 1, not only those since the checkpoint last verified, "
    "and compare it with what was signed, naming each position changed, deleted or put there "
    "since.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Write the kept tree again from the stored events (after it was lost or damaged), "
    "only if they give every signed root. Implies --full.",
)
@json_option
@click.pass_context
def verify(
    ctx: click.Context, /, public_key: Path | None, full: bool, repair: bool, as_json: bool
) -> None:
    """Check every checkpoint: its signature, and that each extends the one before (a
    consistency proof); the stored events signed since the checkpoint last verified (with
    --full, every one from position 1) against the signed roots; and the events after the
    latest checkpoint as signing checks them. Records what was verified when all is well. Exit
    0, or 3 listing the problems."""
    state: State = ctx.find_object(State)  # type: ignore[assignment]
    try:
        if public_key is None:
            raise BadInput(f"no public key: give --public-key FILE or set ${PUBLIC_KEY_ENV}")
        engine = state.engine()
        result = verify_log(
            engine.store,
            load_public_key(public_key),
            full=full,
            repair=repair,
            now=engine.clock(),
        )
    except AftersalesError as exc:
        fail_with(exc, as_json)
    except PersistenceError as exc:
        fail("store_unavailable", f"the store failed: {_one_line(exc)}", 1, as_json)
    if as_json:
        click.echo(to_json(result.to_json()))
    elif result.problems:
        click.echo(f"NOT verified: {len(result.problems)} problem(s)")
        for p in result.problems:
            click.echo(f"  {p}")
    else:
        click.echo(render_verified(result))
    if result.problems:
        click.echo(f"error: {len(result.problems)} checkpoint problem(s)", err=True)
        sys.exit(NOT_VERIFIED)
