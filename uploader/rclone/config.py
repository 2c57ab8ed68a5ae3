"""How a resolved remote becomes rclone configuration: environment variables for the child
(the only way credentials reach rclone), or INI text for debugging.

Part of the rclone client (``uploader.rclone.client`` is the front door): it knows rclone's
config-by-environment convention, which options rclone wants *obscured*, and the backend
defaults we add. Nothing here runs rclone.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Mapping

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from uploader.remotes.config import ResolvedRemote

#: the one remote name we give rclone; paths are ``silvasonic:<remote_path>``
REMOTE_NAME = "silvasonic"
_ENV_PREFIX = f"RCLONE_CONFIG_{REMOTE_NAME.upper()}_"

# rclone's public, fixed obscuring key (lib/obscure/obscure.go). Obscuring is not encryption:
# it only keeps a password from being read over a shoulder, and rclone requires it for options
# it marks IsPassword.
_OBSCURE_KEY = bytes.fromhex("9c935b48730a554d6bfd7c63c886a92bd390198eb8128afbf4de162b8b95f638")
_AES_BLOCK = 16

# options rclone declares IsPassword (it reveals them before use), per backend
OBSCURED_OPTIONS: dict[str, frozenset[str]] = {
    "webdav": frozenset({"pass"}),
    "sftp": frozenset({"pass", "key_file_pass"}),
}

# Defaults we add unless the remote sets the option itself (docs/rclone.md, "Flags and why"):
# s3 no_check_bucket: never create a bucket on the fly — a mistyped bucket (= target_path)
#   must fail loudly as NoSuchBucket (config) instead of silently archiving into a new bucket,
#   and it saves a PUT-bucket request per file with a process per file.
BACKEND_DEFAULTS: dict[str, dict[str, str]] = {
    "s3": {"no_check_bucket": "true"},
}

# Parent environment passed through to rclone: TLS trust, proxies, locale, home for its cache.
# Everything else (database URLs, the Fernet key, the parent's own RCLONE_* tuning) stays out.
# AWS_CA_BUNDLE is safe with rclone >= 1.61 (1.60's s3 backend fails on it;
# docs/design/0006-transports.md); v1.75 was verified against `rclone serve s3` with it set.
PASSTHROUGH_ENV = (
    "PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "TZ",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "AWS_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)  # fmt: skip


def obscure(plain: str) -> str:
    """rclone's ``obscure``: AES-256-CTR with the fixed key, a random IV, base64url unpadded.

    Done in-process so no password is ever handed to an ``rclone obscure`` subprocess (upstream
    did that, once per upload, with the password on its argv).
    """
    iv = os.urandom(_AES_BLOCK)
    enc = Cipher(algorithms.AES(_OBSCURE_KEY), modes.CTR(iv)).encryptor()
    blob = iv + enc.update(plain.encode()) + enc.finalize()
    return base64.urlsafe_b64encode(blob).decode().rstrip("=")


def reveal(obscured: str) -> str:
    """The inverse of :func:`obscure` (tests and debugging); raises ValueError on garbage."""
    padded = obscured + "=" * (-len(obscured) % 4)
    try:
        blob = base64.urlsafe_b64decode(padded.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError("not an rclone-obscured value") from exc
    if len(blob) < _AES_BLOCK:
        raise ValueError("not an rclone-obscured value (too short)")
    dec = Cipher(algorithms.AES(_OBSCURE_KEY), modes.CTR(blob[:_AES_BLOCK])).decryptor()
    return (dec.update(blob[_AES_BLOCK:]) + dec.finalize()).decode()


def rclone_options(remote: ResolvedRemote) -> dict[str, str]:
    """The remote's rclone options: ``type``, backend defaults, then its own options, with the
    IsPassword ones obscured. Keys are rclone's option names (``pass``, not ``pass_``).

    Key-file paths pass as they are: ``uploader.remotes.config`` accepts only absolute paths inside
    the keys folder, so rclone's working directory cannot change what they name.
    """
    obscured = OBSCURED_OPTIONS.get(remote.type, frozenset())
    options = {"type": remote.type, **BACKEND_DEFAULTS.get(remote.type, {})}
    for key, value in remote.options.items():
        options[key] = obscure(value) if key in obscured else value
    return options


def config_env(options: Mapping[str, str]) -> dict[str, str]:
    """``RCLONE_CONFIG_SILVASONIC_<KEY>`` variables: how rclone reads a remote from the
    environment, so no config file with credentials is ever written for an upload."""
    return {_ENV_PREFIX + key.upper(): value for key, value in options.items()}


def child_env(
    options: Mapping[str, str],
    extra: Mapping[str, str] | None = None,
    *,
    parent: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The complete environment for an rclone child: a short passthrough list from the
    parent, no config file (``RCLONE_CONFIG=/notfound`` keeps rclone's config in memory),
    the remote, and ``extra`` (e.g. the rc credentials)."""
    source = os.environ if parent is None else parent
    env = {k: source[k] for k in PASSTHROUGH_ENV if k in source}
    env["RCLONE_CONFIG"] = "/notfound"
    env.update(config_env(options))
    if extra:
        env.update(extra)
    return env


def render_ini(options: Mapping[str, str]) -> str:
    """An rclone.conf section for the remote: the seed's ``generate_rclone_conf`` format.

    For debugging and ``rclone --config`` by hand only; uploads never write one. Newlines in a
    value (``key_pem``) are written as ``\\n``, as rclone's own config writer does.
    """
    lines = [f"[{REMOTE_NAME}]"]
    lines += [f"{key} = {value}".replace("\n", "\\n") for key, value in options.items()]
    return "\n".join(lines) + "\n"


def secret_values(remote: ResolvedRemote, options: Mapping[str, str]) -> frozenset[str]:
    """Everything to mask in kept text: the plain secrets and their obscured forms (obscuring
    is reversible, so an obscured password is as good as the password)."""
    obscured = OBSCURED_OPTIONS.get(remote.type, frozenset())
    extra: Iterable[str] = (options[k] for k in obscured if k in options)
    return frozenset(remote.secrets) | frozenset(extra)
