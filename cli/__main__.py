"""``python -m cli`` = ``silvasonic-uploader`` (used where the console script is not on PATH)."""

from cli.main import entry

entry()
