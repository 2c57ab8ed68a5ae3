"""Indexes that keep the pending-pairs walk and the retry pick bounded (docs/pending.md).

- ``ix_recordings_live_id``: recordings(id) WHERE NOT local_deleted. The per-remote walk goes
  forward by id from the remote's cursor; on a station where the Janitor has deleted most old
  audio, a remote added later would otherwise step over every deleted row on the heap.
- ``ix_pair_state_ready``: pair_state(remote_slug, recording_id) WHERE parked_until IS NULL.
  Retry work, oldest first, without stepping over parked pairs (there may be thousands).
- ``ix_pair_state_parked``: pair_state(remote_slug, parked_until) WHERE parked_until IS NOT
  NULL. Parked pairs whose window has passed, and ``status``'s parked list.

Plain CREATE INDEX (not CONCURRENTLY): Alembic runs a revision in one transaction; at a
million recordings the build takes about a second, during which inserts into ``recordings``
wait. ``db upgrade`` is an operator's step, so that is acceptable.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_recordings_live_id ON recordings (id) "
        "WHERE local_deleted = false"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_pair_state_ready ON pair_state (remote_slug, recording_id) "
        "WHERE parked_until IS NULL"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_pair_state_parked ON pair_state (remote_slug, parked_until) "
        "WHERE parked_until IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_pair_state_parked")
    op.execute("DROP INDEX IF EXISTS ix_pair_state_ready")
    op.execute("DROP INDEX IF EXISTS ix_recordings_live_id")
