"""When a recording is complete: which remotes count, and the audit that proves they hold it.

``active`` is the one definition of the required and the running remotes; ``audit_logger``
writes the insert-only audit (``uploads``) and owns the completion rule, the signal the
Janitor trusts before it deletes audio.
"""
