"""Desired state: which uploader workers should run (ADR-0029: a separate evaluator, so its
failure can never drop another evaluator's specs).

:class:`UploaderEvaluator` turns the *running* remotes of
:func:`uploader.completion.active.active_remotes` — the one definition shared with the dispatcher
and ``status`` — into specs. :func:`combine` joins several evaluators, each isolated, which is how
the upstream Controller can run ours beside its recorder evaluator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import structlog
from sqlalchemy.orm import Session

from controller_ext.container_spec import (
    SERVICE,
    Tier2ServiceSpec,
    UploaderEnvConfig,
    build_uploader_spec,
    host_mode_health_port,
)
from uploader.completion.active import ActiveRemotes, SkipReason, active_remotes
from uploader.errors import RemoteMisconfigured

log = structlog.get_logger("controller")


class Evaluator(Protocol):
    """Anything that computes desired specs from the database (upstream's evaluators too)."""

    def evaluate(self, session: Session) -> list[Tier2ServiceSpec]: ...


@dataclass(frozen=True)
class Evaluation:
    """The joined specs, and the evaluators that failed this time (by their ``service``).

    The reconcile loop must leave the instances of a failed evaluator's service as they are:
    an evaluator that could not say what it wants has not said it wants nothing.
    """

    specs: tuple[Tier2ServiceSpec, ...]
    failed_services: frozenset[str]


def _service_of(evaluator: Evaluator) -> str:
    return str(getattr(evaluator, "service", type(evaluator).__name__))


def evaluate_all(
    evaluators: Iterable[Evaluator],
    session: Session,
    *,
    on_failure: Callable[[str, Exception], None] | None = None,
) -> Evaluation:
    """Run each evaluator in its own try/except; a failure is rolled back so the next one gets
    a usable session, and reported to ``on_failure(service, exc)`` (default: logged as
    ``controller.evaluator_failed``; the reconcile loop passes a handler that logs an ongoing
    failure once a minute instead of every cycle)."""
    specs: list[Tier2ServiceSpec] = []
    seen: set[str] = set()
    failed: set[str] = set()
    for evaluator in evaluators:
        service = _service_of(evaluator)
        try:
            produced = evaluator.evaluate(session)
        except Exception as exc:
            failed.add(service)
            session.rollback()
            if on_failure is not None:
                on_failure(service, exc)
            else:
                log.error(
                    "controller.evaluator_failed",
                    service=service,
                    error=type(exc).__name__,
                    detail=str(exc)[:300],
                )
            continue
        for spec in produced:
            if spec.name in seen:
                log.warning("controller.duplicate_spec", name=spec.name, service=service)
                continue
            seen.add(spec.name)
            specs.append(spec)
    return Evaluation(tuple(specs), frozenset(failed))


def combine(evaluators: Iterable[Evaluator], session: Session) -> list[Tier2ServiceSpec]:
    """All evaluators' specs joined; one failing evaluator costs only its own specs."""
    return list(evaluate_all(evaluators, session).specs)


class UploaderEvaluator:
    """One spec per running remote; misconfigured remotes are skipped with one warning per
    remote and problem (not one per cycle), paused and over-cap remotes are noted once."""

    service = SERVICE

    def __init__(
        self,
        *,
        active: Callable[[Session], ActiveRemotes] = active_remotes,
        env: Callable[[], UploaderEnvConfig] = UploaderEnvConfig,
    ) -> None:
        self._active = active
        self._env = env
        self._noted: dict[str, tuple[str, str]] = {}  # slug -> (reason, detail) last logged
        self.last: ActiveRemotes | None = None

    @property
    def required_slugs(self) -> frozenset[str] | None:
        """The required remotes as of the last successful evaluation (None before one).

        A worker removed for a remote outside this set is gone for good (its queue may be
        purged); a paused or misconfigured remote stays required.
        """
        return None if self.last is None else frozenset(self.last.required_slugs)

    def evaluate(self, session: Session) -> list[Tier2ServiceSpec]:
        """Specs for ``active_remotes(session).running``, in that order.

        Raises when the database or the controller's environment is unusable (the caller
        isolates it); a single remote that cannot be built is skipped.
        """
        active = self._active(session)
        env = self._env()
        problems: dict[str, tuple[SkipReason, str]] = {
            s.slug: (s.reason, s.detail) for s in active.skipped
        }
        taken: set[int] = set()
        specs: list[Tier2ServiceSpec] = []
        for remote in active.running:
            port = (
                host_mode_health_port(remote.slug, env.uploader_health_port, taken)
                if env.network_mode == "host"
                else None
            )
            try:
                specs.append(build_uploader_spec(remote, env, health_port=port))
            except (RemoteMisconfigured, ValueError) as exc:
                problems[remote.slug] = (SkipReason.misconfigured, str(exc))
        self._note(problems)
        self.last = active
        return specs

    def _note(self, problems: dict[str, tuple[SkipReason, str]]) -> None:
        for slug in set(self._noted) - set(problems):
            del self._noted[slug]  # recovered: a later problem is news again
        for slug, (reason, detail) in problems.items():
            if self._noted.get(slug) == (reason.value, detail):
                continue
            self._noted[slug] = (reason.value, detail)
            if reason is SkipReason.misconfigured:
                log.warning("controller.remote_misconfigured", remote=slug, detail=detail)
            else:
                log.info(
                    "controller.remote_skipped", remote=slug, reason=reason.value, detail=detail
                )
