"""The Celery room: the app, the pipeline tasks, the dispatcher, the worker bootsteps.

``celery -A tasks …`` looks up ``tasks.app``.
"""

from tasks.app import app

__all__ = ["app"]
