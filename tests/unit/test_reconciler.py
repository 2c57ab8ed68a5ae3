"""The evaluator, ``combine``, ``sync_state`` and the loop's rules (seed Phase 2 table).

``active_remotes`` itself runs against PostgreSQL in tests/integration; here the evaluator is
given its result directly, and the backend and Redis are small in-memory stand-ins, to reach
each branch of the rules quickly.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from unittest.mock import MagicMock

import pytest
import structlog
from sqlalchemy.orm import Session

from controller_ext.backend import (
    BackendUnavailable,
    ManagedInstance,
    RestartBackoff,
    SyncResult,
    sync_state,
)
from controller_ext.container_spec import (
    LABEL_DEVICE_ID,
    LABEL_SERVICE,
    Tier2ServiceSpec,
    UploaderEnvConfig,
    build_uploader_spec,
)
from controller_ext.evaluator import UploaderEvaluator, combine, evaluate_all
from controller_ext.heartbeat_gate import HeartbeatProblem, heartbeat_problem
from controller_ext.queues import purge_queue_keys, queue_keys
from controller_ext.reconciler import ReconciliationLoop
from uploader.completion.active import ActiveRemotes, RemoteRef, Skipped, SkipReason


@pytest.fixture(autouse=True)
def controller_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("SILVASONIC_", "POSTGRES_")) and not name.startswith(
            "SILVASONIC_TEST_"
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SILVASONIC_WORKSPACE_PATH", "/srv/silvasonic")


def ref(slug: str, type: str = "webdav", target: str | None = None) -> RemoteRef:
    return RemoteRef(slug, type, slug.title(), target)


def evaluator_for(active: ActiveRemotes) -> UploaderEvaluator:
    return UploaderEvaluator(active=lambda _session: active)


SESSION = MagicMock(spec=Session)


# -- the evaluator (seed table) -------------------------------------------------------------


def test_evaluates_uploaders_from_active_remotes() -> None:
    active = ActiveRemotes(required=(ref("a"), ref("b")), running=(ref("a"), ref("b")))

    specs = evaluator_for(active).evaluate(SESSION)

    assert [s.name for s in specs] == ["silvasonic-uploader-a", "silvasonic-uploader-b"]
    assert all(s.labels[LABEL_SERVICE] == "uploader" for s in specs)


def test_inactive_remote_excluded() -> None:
    # an inactive remote is neither required nor running; a required one that is not running
    # (here: misconfigured) gets no spec either — the evaluator follows `running`, not `required`
    active = ActiveRemotes(
        required=(ref("a"), ref("b")),
        running=(ref("a"),),
        skipped=(Skipped("b", SkipReason.misconfigured, "url: Field required"),),
    )

    specs = evaluator_for(active).evaluate(SESSION)

    assert [s.device_id for s in specs] == ["a"]


def test_uploader_enabled_false_returns_empty() -> None:
    paused = ActiveRemotes(
        required=(ref("a"), ref("b")),
        running=(),
        skipped=(
            Skipped("a", SkipReason.paused, "uploader.enabled is false"),
            Skipped("b", SkipReason.paused, "uploader.enabled is false"),
        ),
    )
    evaluator = evaluator_for(paused)

    assert evaluator.evaluate(SESSION) == []
    # paused remotes stay required: their queues are not purged
    assert evaluator.required_slugs == frozenset({"a", "b"})


def test_max_uploaders_respected_order() -> None:
    # active_remotes orders by created_at ASC, slug ASC and cuts to max_uploaders
    active = ActiveRemotes(
        required=(ref("old"), ref("b-mid"), ref("a-new")),
        running=(ref("old"), ref("b-mid"), ref("a-new")),
        skipped=(Skipped("newest", SkipReason.over_cap, "system.max_uploaders is 3"),),
    )

    specs = evaluator_for(active).evaluate(SESSION)

    assert [s.device_id for s in specs] == ["old", "b-mid", "a-new"]


class RecorderStandIn:
    """The upstream recorder evaluator's place in ``combine``."""

    service = "recorder"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def evaluate(self, session: Session) -> list[Tier2ServiceSpec]:
        if self.fail:
            raise RuntimeError("profile table unreadable")
        return [
            Tier2ServiceSpec(
                image="localhost/silvasonic_recorder:latest",
                name="silvasonic-recorder-ultramic-034f",
                network="silvasonic-net",
                labels={LABEL_SERVICE: "recorder", LABEL_DEVICE_ID: "ultramic"},
                memory_limit="512m",
                cpu_limit=1.0,
                oom_score_adj=-999,
            )
        ]


def test_combined_recorders_and_uploaders() -> None:
    uploaders = evaluator_for(ActiveRemotes(required=(ref("a"),), running=(ref("a"),)))

    specs = combine([RecorderStandIn(), uploaders], SESSION)

    assert [s.name for s in specs] == [
        "silvasonic-recorder-ultramic-034f",
        "silvasonic-uploader-a",
    ]


def test_combined_isolates_a_failing_evaluator() -> None:
    class Broken:
        service = "uploader"

        def evaluate(self, session: Session) -> list[Tier2ServiceSpec]:
            raise RuntimeError("storage_remotes unreadable")

    session = MagicMock(spec=Session)
    with structlog.testing.capture_logs() as logs:
        evaluation = evaluate_all([RecorderStandIn(), Broken()], session)

    assert [s.name for s in evaluation.specs] == ["silvasonic-recorder-ultramic-034f"]
    assert evaluation.failed_services == {"uploader"}
    session.rollback.assert_called_once()
    assert [e["event"] for e in logs] == ["controller.evaluator_failed"]


def test_failing_recorder_evaluator_keeps_uploader_specs() -> None:
    uploaders = evaluator_for(ActiveRemotes(required=(ref("a"),), running=(ref("a"),)))

    specs = combine([RecorderStandIn(fail=True), uploaders], SESSION)

    assert [s.device_id for s in specs] == ["a"]


def test_missing_remote_config_logged() -> None:
    active = ActiveRemotes(
        required=(ref("good"), ref("bad"), ref("usb", "local", None)),
        running=(ref("good"), ref("usb", "local", None)),
        skipped=(Skipped("bad", SkipReason.misconfigured, "url: Field required"),),
    )
    evaluator = evaluator_for(active)

    with structlog.testing.capture_logs() as logs:
        first = evaluator.evaluate(SESSION)
        for _ in range(3):
            evaluator.evaluate(SESSION)

    assert [s.device_id for s in first] == ["good"]
    warned = [(e["event"], e["remote"]) for e in logs if e["log_level"] == "warning"]
    # one warning per remote and problem, not one per cycle
    assert sorted(warned) == [
        ("controller.remote_misconfigured", "bad"),
        ("controller.remote_misconfigured", "usb"),
    ]


def test_changed_problem_is_logged_again_and_recovery_resets() -> None:
    state: dict[str, Any] = {"detail": "url: Field required", "bad": True}

    def active(_session: Session) -> ActiveRemotes:
        if not state["bad"]:
            return ActiveRemotes(required=(ref("r"),), running=(ref("r"),))
        return ActiveRemotes(
            required=(ref("r"),),
            running=(),
            skipped=(Skipped("r", SkipReason.misconfigured, state["detail"]),),
        )

    evaluator = UploaderEvaluator(active=active)
    with structlog.testing.capture_logs() as logs:
        evaluator.evaluate(SESSION)
        state["detail"] = "user: Field required"
        evaluator.evaluate(SESSION)
        state["bad"] = False
        evaluator.evaluate(SESSION)
        state["bad"] = True
        evaluator.evaluate(SESSION)

    details = [e["detail"] for e in logs if e["event"] == "controller.remote_misconfigured"]
    assert details == ["url: Field required", "user: Field required", "user: Field required"]


def test_broken_controller_environment_fails_the_evaluator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SILVASONIC_WORKSPACE_PATH")
    evaluator = evaluator_for(ActiveRemotes(required=(ref("a"),), running=(ref("a"),)))

    evaluation = evaluate_all([evaluator], MagicMock(spec=Session))

    assert evaluation.specs == () and evaluation.failed_services == {"uploader"}


def test_host_network_gives_each_worker_its_own_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILVASONIC_NETWORK_MODE", "host")
    active = ActiveRemotes(required=(ref("a"), ref("b")), running=(ref("a"), ref("b")))

    specs = evaluator_for(active).evaluate(SESSION)

    ports = {s.environment["SILVASONIC_HEALTH_PORT"] for s in specs}
    assert len(ports) == 2


# -- sync_state ------------------------------------------------------------------------------


class FakeBackend:
    """An in-memory backend: enough to exercise the shared reconcile rule."""

    kind = "fake"

    def __init__(self) -> None:
        self.instances: dict[str, ManagedInstance] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_start: set[str] = set()
        self.unavailable = False
        self._n = 0
        self.backoff = RestartBackoff()
        self.known_ids: set[str] = set()

    def _check(self) -> None:
        if self.unavailable:
            raise BackendUnavailable("socket silent")

    def start(self, spec: Tier2ServiceSpec) -> ManagedInstance | None:
        self._check()
        self.calls.append(("start", spec.name))
        if spec.name in self.fail_start:
            return None
        self._n += 1
        inst = ManagedInstance(spec.name, "running", dict(spec.labels), time.time(), f"id{self._n}")
        self.instances[spec.name] = inst
        return inst

    def stop(self, name: str, timeout_s: float | None = None) -> None:
        self._check()
        self.calls.append(("stop", name))

    def remove(self, name: str) -> None:
        self._check()
        self.calls.append(("remove", name))
        self.instances.pop(name, None)

    def list_managed(self) -> list[ManagedInstance]:
        self._check()
        return list(self.instances.values())

    def sync_state(
        self, desired: Sequence[Tier2ServiceSpec], actual: Sequence[ManagedInstance]
    ) -> SyncResult:
        return sync_state(self, desired, actual, backoff=self.backoff, known_ids=self.known_ids)

    def put(self, spec: Tier2ServiceSpec, status: str = "running", **kw: Any) -> ManagedInstance:
        self._n += 1
        inst = ManagedInstance(
            spec.name, status, dict(spec.labels), kw.get("started_at", time.time()), f"id{self._n}"
        )
        self.instances[spec.name] = inst
        return inst


def spec_for(slug: str, **env: str) -> Tier2ServiceSpec:
    config = UploaderEnvConfig(workspace_path="/srv/silvasonic", **env)  # type: ignore[arg-type]
    return build_uploader_spec(ref(slug), config)


def test_sync_starts_missing() -> None:
    backend = FakeBackend()

    with structlog.testing.capture_logs() as logs:
        result = backend.sync_state([spec_for("a")], [])

    assert result.started == ["silvasonic-uploader-a"]
    assert backend.calls == [("start", "silvasonic-uploader-a")]
    assert [e["event"] for e in logs] == ["controller.container_started"]


def test_sync_adopts_matching_once() -> None:
    backend = FakeBackend()
    spec = spec_for("a")
    backend.put(spec)

    with structlog.testing.capture_logs() as logs:
        first = backend.sync_state([spec], backend.list_managed())
        second = backend.sync_state([spec], backend.list_managed())

    assert first.adopted == ["silvasonic-uploader-a"] and second.kept == ["silvasonic-uploader-a"]
    assert backend.calls == []  # adopted, not recreated
    assert [e["event"] for e in logs] == ["controller.container_adopted"]


def test_sync_recreates_on_config_drift() -> None:
    backend = FakeBackend()
    backend.put(spec_for("a"))
    changed = spec_for("a", uploader_memory_limit="384m")

    with structlog.testing.capture_logs() as logs:
        result = backend.sync_state([changed], backend.list_managed())

    assert result.recreated == ["silvasonic-uploader-a"]
    assert [c[0] for c in backend.calls] == ["stop", "remove", "start"]
    assert backend.instances["silvasonic-uploader-a"].config_hash == changed.config_hash
    event = next(e for e in logs if e["event"] == "controller.container_recreated")
    assert event["reason"] == "config_drift"


def test_sync_removes_undesired_and_reports_it() -> None:
    backend = FakeBackend()
    gone = backend.put(spec_for("gone"))

    result = backend.sync_state([], backend.list_managed())

    assert result.removed == [gone]
    assert backend.calls == [
        ("stop", "silvasonic-uploader-gone"),
        ("remove", "silvasonic-uploader-gone"),
    ]


def test_sync_restarts_a_stopped_worker_with_backoff() -> None:
    backend = FakeBackend()
    spec = spec_for("a")
    backend.put(spec, status="exited")

    first = backend.sync_state([spec], backend.list_managed())
    backend.put(spec, status="exited")  # it died again at once
    second = backend.sync_state([spec], backend.list_managed())

    assert first.recreated == ["silvasonic-uploader-a"]
    assert second.deferred == ["silvasonic-uploader-a"]  # not restarted every cycle


def test_sync_leaves_restarting_container_to_podman() -> None:
    backend = FakeBackend()
    spec = spec_for("a")
    backend.put(spec, status="restarting")

    result = backend.sync_state([spec], backend.list_managed())

    assert result.deferred == ["silvasonic-uploader-a"] and backend.calls == []


def test_sync_failed_start_is_backed_off_and_others_proceed() -> None:
    backend = FakeBackend()
    backend.fail_start.add("silvasonic-uploader-a")

    first = backend.sync_state([spec_for("a"), spec_for("b")], [])
    second = backend.sync_state([spec_for("a"), spec_for("b")], backend.list_managed())

    assert first.failed == ["silvasonic-uploader-a"] and first.started == ["silvasonic-uploader-b"]
    assert second.deferred == ["silvasonic-uploader-a"]


def test_sync_propagates_backend_unavailable() -> None:
    backend = FakeBackend()
    backend.unavailable = True

    with pytest.raises(BackendUnavailable):
        backend.sync_state([spec_for("a")], [])


def test_backoff_doubles_to_a_ceiling() -> None:
    backoff = RestartBackoff(base_s=2, max_s=10)

    delays = [backoff.record("x", now=0.0) for _ in range(5)]

    assert delays == [2, 4, 8, 10, 10]
    assert not backoff.ready("x", now=9.9) and backoff.ready("x", now=10.0)


# -- heartbeat gate and queue purge ------------------------------------------------------------


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.down = False

    def get(self, key: str) -> Any:
        if self.down:
            import redis

            raise redis.ConnectionError("down")
        return self.data.get(key)

    def scan_iter(self, match: str, count: int = 10) -> Iterator[str]:
        prefix = match.rstrip("*")
        return iter([k for k in self.data if k.startswith(prefix)])

    def delete(self, *keys: str) -> int:
        return sum(1 for k in keys if self.data.pop(k, None) is not None)

    def beat(self, slug: str, age_s: float = 0.0, status: str = "ok") -> None:
        payload = {"timestamp": time.time() - age_s, "health": {"status": status}}
        self.data[f"silvasonic:status:{slug}"] = json.dumps(payload)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda r: None, HeartbeatProblem.missing),
        (lambda r: r.beat("a", age_s=60), HeartbeatProblem.stale),
        (lambda r: r.data.update({"silvasonic:status:a": "{not json"}), HeartbeatProblem.invalid),
        (lambda r: r.beat("a", status="error"), HeartbeatProblem.reports_error),
        (lambda r: r.beat("a", status="starting"), None),
        (lambda r: r.beat("a"), None),
    ],
)
def test_heartbeat_problem(setup: Any, expected: HeartbeatProblem | None) -> None:
    client = FakeRedis()
    setup(client)

    assert heartbeat_problem(client, "a") is expected  # type: ignore[arg-type]


def test_purge_queue_keys_removes_every_kombu_key() -> None:
    client = FakeRedis()
    for key in [
        *queue_keys("a"),
        "upload.a\x06\x163",
        "upload.a\x06\x169",
        "upload.ab",
        "upload.b",
    ]:
        client.data[key] = "x"

    assert purge_queue_keys(client, "a") == 5  # type: ignore[arg-type]
    assert sorted(client.data) == ["upload.ab", "upload.b"]


@contextmanager
def fake_session() -> Iterator[Session]:
    yield MagicMock(spec=Session)


def make_loop(
    backend: FakeBackend, evaluator: Any, client: FakeRedis | None, grace_s: float = 60.0
) -> ReconciliationLoop:
    return ReconciliationLoop(
        backend,
        [evaluator],
        fake_session,
        redis_client=client,  # type: ignore[arg-type]
        grace_period_s=grace_s,
    )


def test_heartbeat_gate_waits_for_the_grace_period() -> None:
    backend, client = FakeBackend(), FakeRedis()
    spec = spec_for("a")
    evaluator = evaluator_for(ActiveRemotes(required=(ref("a"),), running=(ref("a"),)))
    young = backend.put(spec, started_at=time.time() - 5)  # no heartbeat yet

    report = make_loop(backend, evaluator, client).run_once()

    assert report.ok and report.evicted == {}
    assert backend.instances[spec.name] == young


def test_heartbeat_gate_recreates_after_the_grace_period() -> None:
    backend, client = FakeBackend(), FakeRedis()
    spec = spec_for("a")
    evaluator = evaluator_for(ActiveRemotes(required=(ref("a"),), running=(ref("a"),)))
    old = backend.put(spec, started_at=time.time() - 120)

    with structlog.testing.capture_logs() as logs:
        report = make_loop(backend, evaluator, client).run_once()

    assert report.evicted == {spec.name: "heartbeat_missing"}
    assert report.sync is not None and report.sync.started == [spec.name]
    assert backend.instances[spec.name].id != old.id
    assert "controller.heartbeat_missing" in [e["event"] for e in logs]


def test_heartbeat_gate_keeps_a_worker_with_a_fresh_heartbeat() -> None:
    backend, client = FakeBackend(), FakeRedis()
    spec = spec_for("a")
    evaluator = evaluator_for(ActiveRemotes(required=(ref("a"),), running=(ref("a"),)))
    backend.put(spec, started_at=time.time() - 120)
    client.beat("a", age_s=3)

    report = make_loop(backend, evaluator, client).run_once()

    assert report.evicted == {} and backend.calls == []


def test_heartbeat_gate_skipped_while_redis_is_down() -> None:
    backend, client = FakeBackend(), FakeRedis()
    spec = spec_for("a")
    evaluator = evaluator_for(ActiveRemotes(required=(ref("a"),), running=(ref("a"),)))
    backend.put(spec, started_at=time.time() - 120)
    client.down = True

    report = make_loop(backend, evaluator, client).run_once()

    assert report.ok and report.evicted == {} and backend.calls == []


def test_failed_evaluator_leaves_its_workers_running() -> None:
    class Broken:
        service = "uploader"

        def evaluate(self, session: Session) -> list[Tier2ServiceSpec]:
            raise RuntimeError("database unreachable")

    backend = FakeBackend()
    backend.put(spec_for("a"))

    report = make_loop(backend, Broken(), None).run_once()

    assert report.ok and report.failed_services == {"uploader"}
    assert backend.calls == [] and "silvasonic-uploader-a" in backend.instances


def test_unavailable_backend_is_reported_not_raised() -> None:
    backend = FakeBackend()
    backend.unavailable = True
    evaluator = evaluator_for(ActiveRemotes(required=(ref("a"),), running=(ref("a"),)))
    loop = make_loop(backend, evaluator, None)

    with structlog.testing.capture_logs() as logs:
        reports = [loop.run_once() for _ in range(3)]
        backend.unavailable = False
        recovered = loop.run_once()

    assert [r.ok for r in reports] == [False, False, False] and recovered.ok
    events = [e["event"] for e in logs if e["event"].startswith("controller.backend")]
    # reported when it starts and when it ends, not once per cycle
    assert events == ["controller.backend_unavailable", "controller.backend_recovered"]


def test_queue_purged_only_when_the_remote_is_retired() -> None:
    backend, client = FakeBackend(), FakeRedis()
    for slug in ("paused", "gone"):
        backend.put(spec_for(slug), started_at=time.time())
        client.data[f"upload.{slug}"] = "queued"
    evaluator = evaluator_for(
        ActiveRemotes(
            required=(ref("paused"),),
            running=(),
            skipped=(Skipped("paused", SkipReason.paused, "uploader.enabled is false"),),
        )
    )

    report = make_loop(backend, evaluator, client).run_once()

    assert report.sync is not None
    assert sorted(i.device_id or "" for i in report.sync.removed) == ["gone", "paused"]
    assert report.purged == ["gone"]
    assert "upload.paused" in client.data and "upload.gone" not in client.data


# -- backend details -------------------------------------------------------------------------


def test_instance_from_a_sparse_list_entry_and_from_inspect() -> None:
    from controller_ext.container_manager import instance_from_attrs

    listed = instance_from_attrs(
        {"Id": "abc", "Names": ["silvasonic-uploader-a"], "State": "exited",
         "StartedAt": 1795726814, "Labels": {LABEL_SERVICE: "uploader"}}
    )  # fmt: skip
    inspected = instance_from_attrs(
        {"Id": "abc", "Name": "/silvasonic-uploader-a",
         "State": {"Status": "running", "StartedAt": "2026-11-26T21:00:14.38230319Z"},
         "Config": {"Labels": {LABEL_SERVICE: "uploader"}}}
    )  # fmt: skip

    assert (listed.name, listed.status, listed.started_at) == (
        "silvasonic-uploader-a",
        "exited",
        1795726814.0,
    )
    assert (inspected.name, inspected.is_running, inspected.service) == (
        "silvasonic-uploader-a",
        True,
        "uploader",
    )
    assert inspected.started_at == pytest.approx(1795726814.382303)


def test_never_started_container_has_no_start_time() -> None:
    from controller_ext.container_manager import instance_from_attrs

    created = instance_from_attrs(
        {
            "Id": "x",
            "Name": "n",
            "State": {"Status": "created", "StartedAt": "0001-01-01T00:00:00Z"},
        }
    )

    assert created.started_at is None


def test_process_environment_translated_to_this_machine() -> None:
    from controller_ext.process_backend import translate_environment

    spec = spec_for("a")

    env = translate_environment(
        spec,
        database_url="postgresql+psycopg2://station:pw@127.0.0.1:6543/silva",
        redis_url="redis://127.0.0.1:6379/3",
        health_port=40123,
    )

    assert env["SILVASONIC_RECORDER_WORKSPACE"] == "/srv/silvasonic/recorder"
    assert env["SILVASONIC_DB_HOST"] == env["POSTGRES_HOST"] == "127.0.0.1"
    assert env["SILVASONIC_DB_PORT"] == env["POSTGRES_PORT"] == "6543"
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]) == (
        "station",
        "pw",
        "silva",
    )
    assert env["SILVASONIC_REDIS_URL"] == "redis://127.0.0.1:6379/3"
    assert env["SILVASONIC_HEALTH_PORT"] == "40123"
    assert env["SILVASONIC_STORAGE_REMOTE_SLUG"] == "a"


def test_process_command_template() -> None:
    from controller_ext.process_backend import command_from_template, default_worker_command

    spec = spec_for("usb-a")

    assert command_from_template("python /x/standin worker --remote {slug}")(spec) == [
        "python", "/x/standin", "worker", "--remote", "usb-a",
    ]  # fmt: skip
    default = default_worker_command(spec)
    assert default[0].endswith("silvasonic-uploader") and default[1:] == [
        "worker",
        "--remote",
        "usb-a",
    ]


class FakeManager:
    def __init__(self, socket_path: str, ping: bool = True, image: bool = True, net: bool = True):
        self.socket_path = socket_path
        self._ping, self._image, self._net = ping, image, net

    def ping(self) -> bool:
        return self._ping

    def image_exists(self, image: str) -> bool:
        return self._image

    def network_exists(self, network: str) -> bool:
        return self._net


@pytest.mark.parametrize(
    ("manager_kw", "env_kw", "db_host", "expected"),
    [
        ({"ping": False}, {}, "database", "does not answer"),
        ({"image": False}, {}, "database", "is not on this machine"),
        ({"net": False}, {}, "database", "network silvasonic-net does not exist"),
        ({}, {}, "127.0.0.1", "database is on this machine's loopback"),
        ({}, {"network_mode": "host"}, "127.0.0.1", None),
        ({}, {"redis_url": "redis://redis:6379/0"}, "database", None),
    ],
)
def test_podman_obstacle(
    tmp_path: Any, manager_kw: dict[str, bool], env_kw: dict[str, str], db_host: str,
    expected: str | None,
) -> None:  # fmt: skip
    from controller_ext.service import podman_obstacle

    socket_path = tmp_path / "podman.sock"
    socket_path.touch()
    settings: dict[str, Any] = {"redis_url": "redis://redis:6379/0", **env_kw}
    env = UploaderEnvConfig(workspace_path="/srv", **settings)

    obstacle = podman_obstacle(
        FakeManager(str(socket_path), **manager_kw),  # type: ignore[arg-type]
        env,
        f"postgresql+psycopg2://u:p@{db_host}:5432/db",
    )

    assert (obstacle is None) if expected is None else (expected in (obstacle or ""))


def test_podman_obstacle_without_a_socket(tmp_path: Any) -> None:
    from controller_ext.service import podman_obstacle

    env = UploaderEnvConfig(workspace_path="/srv")
    manager = FakeManager(str(tmp_path / "none.sock"))

    assert "no Podman socket" in (podman_obstacle(manager, env, "postgresql://h/db") or "")  # type: ignore[arg-type]


def test_process_state_dir_is_per_station(monkeypatch: pytest.MonkeyPatch) -> None:
    from controller_ext.service import ControllerSettings

    a = ControllerSettings(redis_url="redis://127.0.0.1:6379/0")
    b = ControllerSettings(redis_url="redis://127.0.0.1:6379/1")
    pinned = ControllerSettings(process_state_dir="/var/lib/w")

    assert a.state_dir_for("postgresql://h/one") != a.state_dir_for("postgresql://h/two")
    assert a.state_dir_for("postgresql://h/one") != b.state_dir_for("postgresql://h/one")
    assert a.state_dir_for("postgresql://h/one") == a.state_dir_for("postgresql://h/one")
    assert str(pinned.state_dir_for("postgresql://h/one")) == "/var/lib/w"


def test_controller_ext_never_imports_celery() -> None:
    """docs/design/0010-layout.md: the controller extension must run where Celery is not installed."""
    import subprocess
    import sys

    code = (
        "import sys, controller_ext.service, silvasonic_uploader.cli.controller;"
        "sys.exit(any(m.split('.')[0] in ('celery', 'kombu') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
