"""A policy read from a TOML file (engine/domain/policy.py is the policy itself)."""

from __future__ import annotations

from pathlib import Path

from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.policy import Policy, parse_policy


def load_policy(path: str | Path | None) -> Policy:
    """Read a policy file, or the built-in defaults when no path is given."""
    if path is None or str(path) == "":
        return Policy()
    import tomllib  # only when there is a file to read: not on every command's start

    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"policy file {file} does not exist") from None
    except (OSError, ValueError) as exc:  # TOMLDecodeError and UnicodeDecodeError too
        raise BadInput(f"policy file {file} cannot be read: {exc}") from None
    return parse_policy(data, str(file))
