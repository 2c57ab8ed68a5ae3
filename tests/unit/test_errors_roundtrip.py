"""Every exception in uploader/errors.py survives Celery with its type and fields, through
each way Celery carries an exception: pickle, ``get_pickleable_exception`` (what the worker
hands a chain's errback), and a result backend's pickle and JSON formats. Classes are found by
walking the tree, so a class added later is covered without touching this file."""

from __future__ import annotations

import inspect
import pickle
from typing import Any

import pytest
from celery import Celery
from celery.utils.serialization import get_pickleable_exception

from uploader import errors
from uploader.errors import UploaderError

pytestmark = pytest.mark.unit


def _all(cls: type[UploaderError]) -> list[type[UploaderError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _all(sub)
    return out


CLASSES = [c for c in _all(UploaderError) if c.__module__ == errors.__name__]


def _example(cls: type[UploaderError]) -> UploaderError:
    """An instance with a distinct value for every constructor argument."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    values: dict[str, Any] = {}
    for i, p in enumerate(params):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name == "recording_id":
            values[p.name] = 40 + i
        else:
            values[p.name] = f"{p.name}-value-{i}"
    if not values:
        return cls("the message")
    return cls(**values)


def _same(a: BaseException, b: BaseException) -> None:
    assert type(a) is type(b)
    assert str(a) == str(b)
    assert a.args == b.args
    assert {k: v for k, v in vars(a).items() if not k.startswith("__")} == {
        k: v for k, v in vars(b).items() if not k.startswith("__")
    }


def test_every_class_is_covered() -> None:
    names = {c.__name__ for c in CLASSES}
    assert {"RemoteMisconfigured", "RemoteUnavailable", "SecretUnavailable", "SettingsInvalid",
            "FileRejected", "SourceMismatch", "TempSpaceExhausted"} <= names  # fmt: skip
    assert len(CLASSES) == len(names) >= 15


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_pickle_keeps_type_and_fields(cls: type[UploaderError]) -> None:
    exc = _example(cls)
    _same(exc, pickle.loads(pickle.dumps(exc)))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_what_the_worker_hands_the_errback_is_the_exception_itself(
    cls: type[UploaderError],
) -> None:
    # celery.app.trace.handle_failure: exc = get_pickleable_exception(orig_exc); an exception
    # it cannot round-trip is replaced by the nearest base class it can (UploaderError)
    exc = _example(cls)
    _same(exc, get_pickleable_exception(exc))


@pytest.mark.parametrize("serializer", ["json", "pickle"])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_result_backend_rebuilds_it(cls: type[UploaderError], serializer: str) -> None:
    app = Celery(set_as_current=False)
    app.conf.result_serializer = serializer
    app.conf.accept_content = ["json", "pickle"]
    app.conf.result_accept_content = ["json", "pickle"]
    backend = app.backend
    exc = _example(cls)
    stored = backend.prepare_exception(exc, serializer)
    if serializer == "json":
        stored = backend.decode(backend.encode(stored))  # through real JSON
    _same(exc, backend.exception_to_python(stored))
