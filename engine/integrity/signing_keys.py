"""Ed25519 signing keys for checkpoints: generated, loaded from files or the environment, named."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from aftersales.engine.domain.errors import BadInput

SIGNING_KEY_ENV = "AFTERSALES_SIGNING_KEY"
PUBLIC_KEY_ENV = "AFTERSALES_PUBLIC_KEY"


# Keys -------------------------------------------------------------------------------------------


def key_id(public: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex digits of sha256 over its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a path no file can have (a NUL in it)
        raise BadInput(f"cannot read the {what} {str(path)!r}: {exc}") from None


def _raw32(data: bytes) -> bytes | None:
    """A raw 32-byte key, as bytes or as 64 hex digits (or base64) on one line."""
    if len(data) == 32:
        return data
    text = data.strip()
    try:
        if len(text) == 64:
            return bytes.fromhex(text.decode("ascii"))
        decoded = base64.b64decode(text, validate=True)
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded if len(decoded) == 32 else None


def _load_key(
    path: Path, what: str, pem: Callable[[bytes], object], raw: Callable[[bytes], object]
) -> object:
    """A key from a PEM file (read by ``pem``) or a raw 32-byte key (bytes, 64 hex digits or
    base64, read by ``raw``)."""
    data = _read_key_file(path, what)
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            return pem(data)
        except (ValueError, TypeError) as exc:
            raise BadInput(f"{what} {path} is not a readable PEM key: {exc}") from None
    key = _raw32(data)
    if key is None:
        raise BadInput(f"{what} {path} is neither a PEM Ed25519 key nor a raw 32-byte key")
    return raw(key)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8) file or a raw 32-byte key."""
    key = _load_key(
        path,
        "signing key",
        lambda data: serialization.load_pem_private_key(data, password=None),
        Ed25519PrivateKey.from_private_bytes,
    )
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInput(f"signing key {path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file or a raw 32-byte key (bytes, hex or base64)."""
    key = _load_key(
        path, "public key", serialization.load_pem_public_key, Ed25519PublicKey.from_public_bytes
    )
    if not isinstance(key, Ed25519PublicKey):
        raise BadInput(f"public key {path} is not an Ed25519 public key")
    return key


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_key(out: Path) -> tuple[Path, Ed25519PublicKey]:
    """A new signing key written to ``out`` (PEM, mode 0600, never over an existing file) and
    its public key beside it (``out`` + ``.pub``)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_path = out.with_name(out.name + ".pub")
    for p in (out, pub_path):
        if p.exists():
            raise BadInput(f"{p} exists: a key is never written over")
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        os.chmod(out, 0o600)  # whatever the umask
        pub_path.write_bytes(public_pem(key.public_key()))
    except OSError as exc:
        raise BadInput(f"cannot write the key to {out}: {exc.strerror or exc}") from None
    return pub_path, key.public_key()
