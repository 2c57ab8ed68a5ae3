"""The ledger: what a remote still owes, who holds each pair, and what a success row may be
written from.

``work_poller`` (its SQL in ``pending_sql``) finds the recordings a remote still owes, behind
its pending cursor; ``leases`` claims a (recording, remote) pair for one worker, renews,
releases and parks it; ``pair_lock`` is the advisory lock that keeps two executions off one
pair; ``evidence`` is what a lease's steps proved (the encoded FLAC, the verified transfer),
the one source of a success row; ``remote_objects`` gives each recording its own object at a
destination.
"""
