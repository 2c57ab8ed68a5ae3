"""The uploader's own columns, indexes and tables.

- ``uploads``: nullable ``remote_path``, ``duration_s``, ``error_kind``, ``attempt_key``;
  a unique partial index that allows exactly one success row per (recording, remote) and
  answers "does this remote have it?" in one probe; a unique partial index on ``attempt_key``
  so a repeated errback adds no second failure row.
- ``pair_state`` (leased, failed and parked pairs), ``remote_cursor`` (per-remote watermark
  of pairs handed out at least once), ``remote_status`` (ok / unavailable / misconfigured).

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for column, sql_type in (
        ("remote_path", "TEXT"),
        ("duration_s", "DOUBLE PRECISION"),
        ("error_kind", "TEXT"),
        ("attempt_key", "TEXT"),
    ):
        op.execute(f"ALTER TABLE uploads ADD COLUMN IF NOT EXISTS {column} {sql_type}")

    # A SEED-ERA database written by an older uploader may hold duplicate success rows; the
    # audit is immutable, so then the index is created non-unique and the audit logger's row
    # lock on the recording keeps new duplicates out.
    duplicates = op.get_bind().execute(
        sa.text(
            "SELECT 1 FROM uploads WHERE success GROUP BY recording_id, remote_slug "
            "HAVING count(*) > 1 LIMIT 1"
        )
    ).first()
    unique = "" if duplicates else "UNIQUE "
    op.execute(
        f"CREATE {unique}INDEX IF NOT EXISTS uq_uploads_success_pair "
        "ON uploads (recording_id, remote_slug) WHERE success"
    )
    op.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS uq_uploads_attempt_key "
        "ON uploads (attempt_key) WHERE attempt_key IS NOT NULL"
    )

    op.execute(
        """
        CREATE TABLE IF NOT EXISTS pair_state (
            recording_id BIGINT NOT NULL REFERENCES recordings(id),
            remote_slug TEXT NOT NULL REFERENCES storage_remotes(slug) ON DELETE CASCADE,
            lease_token UUID,
            lease_until TIMESTAMPTZ,
            file_failures INTEGER NOT NULL DEFAULT 0,
            parked_until TIMESTAMPTZ,
            last_error TEXT,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (recording_id, remote_slug)
        )"""
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_pair_state_remote_lease "
        "ON pair_state (remote_slug, lease_until)"
    )
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS remote_cursor (
            remote_slug TEXT PRIMARY KEY REFERENCES storage_remotes(slug) ON DELETE CASCADE,
            last_recording_id BIGINT NOT NULL DEFAULT 0,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )"""
    )
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS remote_status (
            remote_slug TEXT PRIMARY KEY REFERENCES storage_remotes(slug) ON DELETE CASCADE,
            state TEXT NOT NULL DEFAULT 'ok',
            since TIMESTAMPTZ NOT NULL DEFAULT now(),
            detail TEXT,
            config_fingerprint TEXT,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )"""
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS remote_status")
    op.execute("DROP TABLE IF EXISTS remote_cursor")
    op.execute("DROP TABLE IF EXISTS pair_state")
    op.execute("DROP INDEX IF EXISTS uq_uploads_attempt_key")
    op.execute("DROP INDEX IF EXISTS uq_uploads_success_pair")
