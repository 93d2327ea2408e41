"""The `aftersales` command: a thin layer that parses, calls the engine and prints."""

from __future__ import annotations

import gc
import importlib
import sys
from collections.abc import Sequence
from typing import Any

import click
from click.shell_completion import CompletionItem

# Each command by name: where it lives and its one-line help. A command's module is imported only
# when that command runs (or is asked for its own help), so `--help`, `--version` and completion
# load click alone; a test checks each line opens the command's own help.
COMMANDS: dict[str, tuple[str, str]] = {
    "audit": (
        "aftersales.commands.cli.audit:audit",
        "Replay a case from its events: who did what when, the state, and whether it verifies.",
    ),
    "batch": (
        "aftersales.commands.cli.batch:batch",
        "Run one action per JSON line of FILE (or - for stdin); print one result line each.",
    ),
    "case": (
        "aftersales.commands.cli.cases:case_group",
        "Return, refund, exchange and reship cases.",
    ),
    "checkpoint": (
        "aftersales.commands.cli.checkpoint:checkpoint_group",
        "Sign a checkpoint: the Merkle tree over every event up to the log's head, its root "
        "signed with an Ed25519 key the store never holds.",
    ),
    "completion": (
        "aftersales.commands.cli.completion:completion",
        "Print the shell completion script for bash, zsh or fish.",
    ),
    "db": (
        "aftersales.commands.cli.db_commands:db_group",
        "The PostgreSQL store's database: its roles (least privilege for the engine, "
        "reporting, merchants' BI logins and auditors).",
    ),
    "demo": (
        "aftersales.commands.cli.demo.play:demo",
        "Play the article's cases end to end on a fresh SQLite store and show what happened.",
    ),
    "import-history": (
        "aftersales.commands.cli.imports:import_history",
        "Import past cases: JSON lines of actions with their times (as `batch` takes them).",
    ),
    "init": ("aftersales.commands.cli.init:init", "Create the store (and schema) if missing."),
    "key": (
        "aftersales.commands.cli.principal_commands:key_group",
        "Keys: the secrets principals present as `Authorization: Bearer KEY`.",
    ),
    "ledger": (
        "aftersales.commands.cli.report:ledger_cmd",
        "Each merchant's money: refunded itself, advanced by the platform and owed, freight, "
        "penalties (from the ledger projection).",
    ),
    "notify": (
        "aftersales.commands.cli.notify_commands:notify_group",
        "Telling the buyer: messages made from case events, in Chinese or English.",
    ),
    "order": (
        "aftersales.commands.cli.orders:order_group",
        "Orders: placed, shipped and delivered, as the order system reports them.",
    ),
    "policy": (
        "aftersales.commands.cli.what_if_commands:policy_group",
        "Policies: what a change of the rules would have done (what-if).",
    ),
    "principal": (
        "aftersales.commands.cli.principal_commands:principal_group",
        "Principals: who may act over HTTP, in which role, for which merchant.",
    ),
    "project": (
        "aftersales.commands.cli.project:project_group",
        "Projections: the tables reports read, kept up to date from the event log.",
    ),
    "quarantine": (
        "aftersales.commands.cli.quarantine_commands:quarantine_group",
        "Stored events an operator decided the projections pass over.",
    ),
    "relay": (
        "aftersales.commands.cli.relay_commands:relay_group",
        "The relay: every event, in log order, to a NATS JetStream stream",
    ),
    "report": (
        "aftersales.commands.cli.report:report_group",
        "Reports for merchants and reporting jobs (from the projections; see `project run`).",
    ),
    "scheduler": (
        "aftersales.commands.cli.clock:scheduler",
        "Tick against the wall clock until SIGINT or SIGTERM, which end it between ticks; "
        "with a signing key, also sign a checkpoint of the log",
    ),
    "serve": (
        "aftersales.commands.http.serve:serve",
        "Serve the HTTP API until SIGINT or SIGTERM, then finish the requests in flight and exit",
    ),
    "buyer": (
        "aftersales.commands.cli.buyers:buyer_group",
        "A buyer's standing: abuse flags and disputes lost (instant refunds).",
    ),
    "shop": (
        "aftersales.commands.cli.shops:shop_group",
        "A shop's settings: return addresses and the rules that approve requests for it.",
    ),
    "tick": (
        "aftersales.commands.cli.clock:tick_command",
        "Fire every deadline that has fallen due: auto-approve, auto-close, auto-refund, "
        "reship overdue.",
    ),
    "webhook": (
        "aftersales.commands.cli.webhook:webhook_group",
        "Signed webhooks: each merchant's events POSTed to its own systems",
    ),
}


def load_command(name: str) -> click.Command:
    module_name, _, attr = COMMANDS[name][0].partition(":")
    command = getattr(importlib.import_module(module_name), attr)
    assert isinstance(command, click.Command)
    return command


class AftersalesGroup(click.Group):
    """Commands loaded when used; click's own usage errors keep exit 2 and, with --json, print a
    JSON error too."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    # Set by main(), which starts a process with the cyclic garbage collector off.
    collector_held = False

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        command = load_command(cmd_name)
        if self.collector_held:
            # What the command's modules built lives as long as the process: kept out of the
            # collector's reach from now on (which also spares the collections Python runs on
            # exit a pass over it), then collection as usual, for commands that run long.
            self.collector_held = False
            gc.freeze()
            gc.enable()
        return command

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        names = [
            CompletionItem(name, help=COMMANDS[name][1])
            for name in self.list_commands(ctx)
            if name.startswith(incomplete)
        ]
        # The group's own options, as click offers them (Command's, not Group's: that one
        # would load every command for its help).
        return names + click.Command.shell_complete(self, ctx, incomplete)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        with formatter.section("Commands"):
            # Shortened as click shortens a command's own help.
            rows = [
                (n, click.Command(n, help=COMMANDS[n][1]).get_short_help_str(limit)) for n in names
            ]
            formatter.write_dl(rows)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            result = super().main(
                argv, prog_name or "aftersales", complete_var, standalone_mode=False, **extra
            )
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            if "--json" in argv:
                from aftersales.commands.cli.output import fail

                fail("bad_input", exc.format_message(), exc.exit_code, as_json=True)
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(result, int) and standalone_mode:
            sys.exit(result)
        return result


@click.group(cls=AftersalesGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    envvar="AFTERSALES_STORE",
    default=None,
    help="sqlite:///file.db or postgresql://user@host:port/db[?schema=NAME] "
    "(default: $AFTERSALES_STORE, else sqlite:///aftersales.db).",
)
@click.option(
    "--policy",
    "policy_path",
    envvar="AFTERSALES_POLICY",
    default=None,
    help="A policy TOML file (default: $AFTERSALES_POLICY, else the built-in rules).",
)
@click.option(
    "--tz",
    envvar="AFTERSALES_TZ",
    default=None,
    help="The zone times are shown in to people: +08:00, UTC or Asia/Shanghai (default: "
    "$AFTERSALES_TZ, else the policy's display_zone, +08:00). JSON keeps full ISO-8601.",
)
@click.version_option(package_name="aftersales")
@click.pass_context
def cli(ctx: click.Context, /, store: str | None, policy_path: str | None, tz: str | None) -> None:
    """An event-sourced after-sales workflow engine: returns, refunds, exchanges."""
    from aftersales.commands.cli.output import State

    state = State(store, policy_path, tz)
    ctx.obj = state
    ctx.call_on_close(state.close)


def main() -> None:
    # A process starts by importing its command's modules: hundreds of thousands of objects
    # (classes, pydantic's schemas, functions) that live until it exits. The cyclic collector
    # would walk them again and again while they are made, for no garbage: it is off until the
    # command is loaded (AftersalesGroup.get_command turns it back on).
    gc.disable()
    cli.collector_held = True
    cli.main()


if __name__ == "__main__":
    main()
