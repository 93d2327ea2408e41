"""Signed tree heads: a checkpoint's size, root and signature, as stored and exported."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from aftersales.engine.domain.errors import NotAllowed
from aftersales.engine.integrity.signing_keys import key_id

HEAD_FORMAT = "aftersales-checkpoint/1"


class TreeDamaged(NotAllowed):
    """The kept tree does not give a signed root: the store was changed under a checkpoint."""


# Signed tree heads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """A signed tree head, as stored: the exact text signed, and its signature."""

    text: str
    signature: str  # hex
    size: int
    events: int
    root: bytes
    signed_at: str
    key_id: str

    @classmethod
    def parse(cls, text: str, signature: str) -> Head:
        try:
            data = json.loads(text)
            if data.get("format") != HEAD_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return cls(
                text=text,
                signature=signature,
                size=int(data["size"]),
                events=int(data["events"]),
                root=bytes.fromhex(data["root"]),
                signed_at=str(data["signed_at"]),
                key_id=str(data["key_id"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TreeDamaged(f"a stored checkpoint cannot be read ({exc}): {text[:200]}") from None

    @classmethod
    def sign(
        cls, key: Ed25519PrivateKey, size: int, events: int, root: bytes, at: datetime
    ) -> Head:
        content = {
            "events": events,
            "format": HEAD_FORMAT,
            "key_id": key_id(key.public_key()),
            "root": root.hex(),
            "signed_at": at.astimezone(UTC).isoformat(),
            "size": size,
        }
        text = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return cls.parse(text, key.sign(text.encode("utf-8")).hex())

    def check(self, public: Ed25519PublicKey) -> str | None:
        """Why this head's signature does not verify with ``public``, or None if it does."""
        wanted = key_id(public)
        if self.key_id != wanted:
            return (
                f"the checkpoint at position {self.size} was signed with key {self.key_id}, "
                f"not with the public key given ({wanted})"
            )
        try:
            public.verify(bytes.fromhex(self.signature), self.text.encode("utf-8"))
        except (InvalidSignature, ValueError):
            return (
                f"the checkpoint at position {self.size} does not verify with the public key "
                f"{wanted}: its signed head was altered or forged"
            )
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.size,
            "events": self.events,
            "root": self.root.hex(),
            "signed_at": self.signed_at,
            "key_id": self.key_id,
        }

    def for_bundle(self) -> dict[str, Any]:
        return {"head": self.text, "signature": self.signature}
