"""The work itself, without Celery: one dispatch cycle and the steps of one pair.

``dispatcher`` is one dispatch cycle (the pause, the upload window of ``schedule``, topping up
each running remote's leases); ``steps`` are the encode, upload and audit steps of one pair as
plain functions the Celery tasks in ``tasks/`` adapt; ``transfer_ahead`` starts a pair's
upload on the worker's rclone daemon while the next pair is encoded.
"""
