"""`aftersales completion bash|zsh|fish`: the shell completion script, from click's own."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")
# The installed program's name, which the shell completes.
PROG = "aftersales"


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, /, shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish.

    \b
    bash: eval "$(aftersales completion bash)"   (in ~/.bashrc)
    zsh:  eval "$(aftersales completion zsh)"    (in ~/.zshrc)
    fish: aftersales completion fish > ~/.config/fish/completions/aftersales.fish
    """
    completer = get_completion_class(shell)
    assert completer is not None
    click.echo(completer(ctx.find_root().command, {}, PROG, "_AFTERSALES_COMPLETE").source())
