"""rclone, the only code that knows its flags, its rc protocol and its error classes.

``client`` is the front door (``RcloneClient``); its parts are ``config`` (a remote as rclone
configuration), ``daemon`` (one ``rclone rcd`` per worker and its rc calls), ``errors`` (rclone's
failures classified into kinds), ``limits`` (bandwidth and hard limits) and ``process_group``
(children that die with their work, also used by the CLI's supervisors).
"""
