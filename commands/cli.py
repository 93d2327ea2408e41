"""The `aftersales` command: a thin layer that parses, calls the engine and prints."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from commands.audit import audit
from commands.batch import batch
from commands.cases import case_group
from commands.clock import scheduler, tick_command
from commands.demo import demo
from commands.imports import import_history, import_orders
from commands.notify import notify_group
from commands.orders import order_group
from commands.output import State, fail
from commands.project import project_group
from commands.relay import relay_group
from commands.report import ledger_cmd, report_group
from commands.webhook import webhook_group


class AftersalesGroup(click.Group):
    """Click's own usage errors keep exit 2 and, with --json, print a JSON error too."""

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
@click.version_option(package_name="aftersales")
@click.pass_context
def cli(ctx: click.Context, /, store: str | None, policy_path: str | None) -> None:
    """An event-sourced after-sales workflow engine: returns, refunds, exchanges."""
    state = State(store, policy_path)
    ctx.obj = state
    ctx.call_on_close(state.close)


cli.add_command(order_group)
cli.add_command(case_group)
cli.add_command(demo)
cli.add_command(batch)
cli.add_command(import_history)
order_group.add_command(import_orders)
cli.add_command(tick_command)
cli.add_command(scheduler)
cli.add_command(audit)
cli.add_command(project_group)
cli.add_command(relay_group)
cli.add_command(notify_group)
cli.add_command(webhook_group)
cli.add_command(report_group)
cli.add_command(ledger_cmd)


def main() -> None:
    cli.main()


if __name__ == "__main__":
    main()
