"""Nothing in the repository may send its reader to a file outside it.

A clone is all a newcomer has. The project started from a design document and reference notes
kept in a folder shared between its engineers (on Celery, measurements, house style, the upstream
contract); citations of them, by file or by section, lead nowhere in a clone.
The decisions they stood for are written down in ``docs/design/``; this test keeps it that way
by failing, with ``file:line``, on any tracked (or new, not ignored) text file that cites one.

Only ``docs/design/history.md`` may name the earlier document: it says what the records replace.
The patterns and examples below are spelled so that neither this test nor a plain ``grep`` for
the old names finds this file: ``\\.`` and character classes in the patterns, split literals
in the examples.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: the one file allowed to say that an earlier design document existed outside the repository
EXEMPT = frozenset({"docs/design/history.md"})

#: files that are not ours to word (resolved dependencies)
SKIP = frozenset({"uv.lock"})

OUTSIDE = re.compile(
    "|".join(
        (
            r"(?<![\w-])design\.md",  # the founding design document, by section
            r"celery[- ]field[- ]notes",
            r"celery[-]experiments",
            r"measurements\.md",
            r"(?<![\w/])measurements\s+§",  # the measurements, by section
            r"style[- ]anchors",
            r"silvasonic[-]contract\.md",
            r"\bcontract\s+(§|gap\b)",  # the upstream contract notes, by section or gap
            r"\.\./shared\b",
            r"/work[/]shared\b",
            r"(?<![\w./-])reference[/]",  # the shared folder's reference notes
        )
    ),
    re.IGNORECASE,
)


def _repository_files() -> list[str]:
    """Tracked files plus new ones not ignored, so a citation fails before its commit; a
    walk (without ``.git`` and ``.venv``) where git is not available, as in an sdist."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        return sorted({name for name in out.decode().split("\0") if name})
    except (OSError, subprocess.CalledProcessError):
        skip_dirs = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
        return sorted(
            path.relative_to(ROOT).as_posix()
            for path in ROOT.rglob("*")
            if path.is_file() and not skip_dirs.intersection(path.relative_to(ROOT).parts)
        )


def outside_citations(names: list[str]) -> list[str]:
    """``file:line: text`` for every line of a text file that cites a path outside the
    repository. Binary files (WAV fixtures, images) are skipped: they cite nothing."""
    found = []
    for name in names:
        if name in EXEMPT or name in SKIP:
            continue
        path = ROOT / name
        if not path.is_file():  # deleted in the working tree, not yet committed
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if OUTSIDE.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    return found


def test_the_patterns_catch_every_spelling() -> None:
    # split literals: the old names must not appear whole in this file (see the docstring)
    cited = [
        "the lease (design" + ".md §2)",
        "celery-field" + "-notes §2.4",
        "refer" + "ence/celery-" + "experiments #10",
        "measurements" + ".md §5",
        "hangs (measurements" + " §4)",
        "style-" + "anchors 'A Celery task, in words'",
        "in the style" + " anchors",
        "the Celery field" + " notes",
        "silvasonic-" + "contract.md §1.1",
        "health port (contract" + " §7)",
        "(contract" + " gap 17)",
        "see ../" + "shared/design",
        "/work/" + "shared/refer" + "ence/x",
        "``refer" + "ence/measurements``",
    ]
    assert [line for line in cited if not OUTSIDE.search(line)] == []
    ours = [
        "docs/design/0003-leases.md",
        "docs/design/README.md",
        "0005-celery-design" + ".md",
        "docs/pending.md §7 (Measured)",
        "the measurements in bench/README.md",
        "a cross-reference/link",
        "docs/design/0012-upstream.md §4",
        "the recorder contract: docs/controller.md §2",
    ]
    assert [line for line in ours if OUTSIDE.search(line)] == []


def test_nothing_cites_a_file_outside_the_repository() -> None:
    names = _repository_files()
    assert len(names) > 50, f"found only {len(names)} files under {ROOT}"
    found = outside_citations(names)
    assert not found, (
        "these lines cite a file outside the repository; link the record in docs/design/ "
        "instead (or write one):\n" + "\n".join(found)
    )
