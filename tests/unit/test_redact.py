"""The one redaction helper: URL credentials, secret-sounding ``key=value`` pairs, literal
secrets, and a readable excerpt of long foreign output."""

from __future__ import annotations

import pytest

from uploader.redact import MASK, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:pw@cloud.example/x", f"https://{MASK}@cloud.example/x"),
        ("redis://:hunter2@redis:6379/0", f"redis://{MASK}@redis:6379/0"),
        (
            "postgresql+psycopg2://u:p%40ss@db/silvasonic",
            f"postgresql+psycopg2://{MASK}@db/silvasonic",
        ),
        ("sftp://station@host/p", f"sftp://{MASK}@host/p"),
    ],
)
def test_url_userinfo_is_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=hunter2 next", f"password={MASK} next"),
        ("pass: hunter2", f"pass: {MASK}"),
        ('secret_access_key: "a b c" done', f"secret_access_key: {MASK} done"),
        ("X-Amz-Security-Token=FQoG&x=1", f"X-Amz-Security-Token={MASK}&x=1"),
        ("AWS_SECRET_ACCESS_KEY=abc;", f"AWS_SECRET_ACCESS_KEY={MASK};"),
        ("Authorization: Bearer abc123token", f"Authorization: {MASK}"),
        ("authorization: Basic dXNlcjpwYXNz rest", f"authorization: {MASK} rest"),
        ("Authorization = Digest 'x y'", f"Authorization = {MASK}"),
    ],
)
def test_secret_sounding_pairs_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Failed to copy: 401 Unauthorized",
        "couldn't connect: dial tcp 127.0.0.1:9: connect: connection refused",
        "directory not found",
    ],
)
def test_ordinary_errors_pass_unchanged(text: str) -> None:
    assert redact(text) == text


def test_literal_secrets_are_masked_longest_first() -> None:
    # a secret that contains another must not leave its tail behind
    assert redact("x abcdef y abc z", ["abc", "abcdef"]) == f"x {MASK} y {MASK} z"


def test_secrets_shorter_than_three_characters_are_not_masked() -> None:
    # masking "ab" everywhere would make every message unreadable
    assert redact("table ab", ["ab", ""]) == "table ab"


def test_secret_inside_foreign_output_is_masked() -> None:
    stderr = "ERROR : upload failed for user station with hunter2-pw-value: 403"
    out = redact(stderr, ["hunter2-pw-value"])
    assert "hunter2-pw-value" not in out
    assert "403" in out


def test_long_text_becomes_an_excerpt_with_both_ends() -> None:
    text = "HEAD" + "x" * 5000 + "TAIL"
    out = redact(text)
    assert len(out) < 2100
    assert out.startswith("HEAD") and out.endswith("TAIL")
    assert " … " in out


def test_masking_happens_before_cutting() -> None:
    secret = "s3cr3t-value-in-the-middle"
    text = "a" * 990 + secret + "b" * 3000  # the secret straddles the cut at 1000
    assert secret[:5] not in redact(text, [secret])
