"""``python -m silvasonic_uploader`` = ``silvasonic-uploader`` (used where the console script is
not on PATH)."""

from silvasonic_uploader.cli.main import entry

entry()
