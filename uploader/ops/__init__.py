"""What a running process tells the station about itself: health, heartbeat, logs and counters.

``health`` serves ``/healthy`` in upstream's shape, with ``consumer_watch`` behind its
``consumer`` component; ``heartbeat`` publishes the Redis status upstream's Controller reads,
with ``worker_counters`` (per-remote counts kept in Redis) in it; ``logs`` sets up structlog
(console or JSON lines) and ``upload_stats`` keeps a worker's upload lines to a summary.
"""
