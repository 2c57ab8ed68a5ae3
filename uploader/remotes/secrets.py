"""Fernet secrets in ``storage_remotes.config``: values stored as ``enc:<token>``.

Compatible with upstream HEAD's ``core/crypto.py`` (same prefix, same key variable). Decrypted
values live only in memory; errors never quote the value or the key.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: ~7.5 MB a worker without an ``enc:`` value never needs
    from cryptography.fernet import Fernet

ENC_PREFIX = "enc:"
KEY_ENV = "SILVASONIC_ENCRYPTION_KEY"


class SecretError(ValueError):
    """Raised for a missing or wrong key; the message names the field, never the value."""


def generate_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def load_encryption_key(environ: dict[str, str] | None = None) -> str | None:
    """The key from ``SILVASONIC_ENCRYPTION_KEY``, or None when unset or empty."""
    value = (environ if environ is not None else os.environ).get(KEY_ENV, "").strip()
    return value or None


def _fernet(key: str) -> Fernet:
    from cryptography.fernet import Fernet

    try:
        return Fernet(key.encode())
    except (ValueError, TypeError):
        raise SecretError(
            f"{KEY_ENV} is not a valid Fernet key (32 url-safe base64 bytes); "
            f"generate one with `silvasonic-uploader secrets generate-key`"
        ) from None


def is_encrypted(value: object) -> bool:
    return isinstance(value, str) and value.startswith(ENC_PREFIX)


def encrypt_value(plain: str, key: str) -> str:
    return ENC_PREFIX + _fernet(key).encrypt(plain.encode()).decode()


def decrypt_value(value: str, key: str | None, *, field: str = "value") -> str:
    """Decrypt an ``enc:`` value; plain values pass through unchanged."""
    if not is_encrypted(value):
        return value
    if key is None:
        raise SecretError(
            f"field {field!r} is encrypted but {KEY_ENV} is not set: "
            f"give the worker the key the secret was encrypted with"
        )
    from cryptography.fernet import InvalidToken

    try:
        return _fernet(key).decrypt(value[len(ENC_PREFIX) :].encode()).decode()
    except InvalidToken:
        raise SecretError(
            f"field {field!r} cannot be decrypted with the configured {KEY_ENV}: "
            f"the key differs from the one used to encrypt it (or the value is damaged)"
        ) from None
