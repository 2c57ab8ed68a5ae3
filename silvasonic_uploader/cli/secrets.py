"""``silvasonic-uploader secrets``: key generation and encrypting a value from stdin."""

from __future__ import annotations

import sys

import click

from uploader.remotes.secrets import SecretError, encrypt_value, generate_key, load_encryption_key


@click.group()
def secrets() -> None:
    """Encryption helpers for storage_remotes.config secrets."""


@secrets.command("generate-key")
def generate_key_cmd() -> None:
    """Print a new Fernet key for SILVASONIC_ENCRYPTION_KEY."""
    click.echo(generate_key())


@secrets.command()
def encrypt() -> None:
    """Read a secret from stdin, print its `enc:` form (needs SILVASONIC_ENCRYPTION_KEY)."""
    key = load_encryption_key()
    if key is None:
        raise click.ClickException("SILVASONIC_ENCRYPTION_KEY is not set")
    value = sys.stdin.readline().rstrip("\n")
    try:
        click.echo(encrypt_value(value, key))
    except SecretError as exc:  # a key that is not a Fernet key: say so, no traceback
        raise click.ClickException(str(exc)) from None
