"""``NAME_FILE`` becomes ``NAME`` in every ``silvasonic-uploader`` process, by the same rule as
the image's entrypoint (which serves commands that are not ours)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from uploader.file_variables import FILE_VARIABLES, FileVariableError, apply_file_variables

ROOT = Path(__file__).resolve().parents[2]


def test_the_list_is_the_entrypoints() -> None:
    script = (ROOT / "docker-entrypoint.sh").read_text()
    found = re.search(r"^FILE_VARIABLES=\(([^)]*)\)", script, re.M)
    assert found is not None
    assert tuple(found.group(1).split()) == FILE_VARIABLES


def test_a_file_becomes_the_variable(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n\n")
    env = {"POSTGRES_PASSWORD_FILE": str(tmp_path / "pw"), "OTHER_FILE": "/nope"}
    assert apply_file_variables(env) == ["POSTGRES_PASSWORD"]
    assert env == {"POSTGRES_PASSWORD": "s3cret", "OTHER_FILE": "/nope"}


def test_both_or_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileVariableError, match="keep one"):
        apply_file_variables({"SILVASONIC_REDIS_URL": "x", "SILVASONIC_REDIS_URL_FILE": "/y"})
    with pytest.raises(FileVariableError, match="cannot be read"):
        apply_file_variables({"SILVASONIC_REDIS_URL_FILE": str(tmp_path / "missing")})


def test_the_cli_applies_it_before_anything_reads_the_environment(tmp_path: Path) -> None:
    # given: the key only as a file, as a worker container gets it
    key = subprocess.run([sys.executable, "-m", "silvasonic_uploader", "secrets", "generate-key"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (tmp_path / "key").write_text(f"{key}\n")
    env = {"PATH": "/usr/bin:/bin", "SILVASONIC_ENCRYPTION_KEY_FILE": str(tmp_path / "key")}

    def encrypt(**more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "silvasonic_uploader", "secrets", "encrypt"], env={**env, **more}, cwd=ROOT,
            input="s3cret\n", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    # when / then: the command used the file's key …
    done = encrypt()
    assert done.returncode == 0 and done.stdout.startswith("enc:"), done.stderr
    # … a missing file stops it with what to do, before anything else …
    missing = encrypt(SILVASONIC_ENCRYPTION_KEY_FILE=str(tmp_path / "gone"))
    assert missing.returncode == 64 and "is the secret mounted" in missing.stderr
    # … and a key that is no key is one clear line, not a traceback
    (tmp_path / "key").write_text("not-a-key\n")
    bad = encrypt()
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "not a valid Fernet key" in bad.stderr
