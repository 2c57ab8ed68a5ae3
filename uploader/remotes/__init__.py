"""A remote: its configuration, its secrets, where its bytes land and whether it answers.

``config`` validates a ``storage_remotes`` row per type (allowlisted options, slug rules) and
resolves it with its decrypted ``secrets``; ``local_roots`` is the allowlist for a ``local``
remote's folder; ``destination`` is where a remote's bytes land now and ``retarget`` what
happens when it is pointed elsewhere; ``state`` is the remote's marker (ok, unavailable,
misconfigured) with its breaker.
"""
