"""The `aftersales` command: a thin layer that parses, calls the engine and prints."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from commands.cases import case_group
from commands.demo import demo
from commands.orders import order_group
from commands.output import State, fail


@click.group()
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


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: click's own usage errors keep exit 2 and, with --json, a JSON error."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="aftersales", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        if "--json" in args:
            fail("bad_input", exc.format_message(), exc.exit_code, as_json=True)
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
