"""Audio on the worker's disk: checking a WAV, encoding it to FLAC, the folder the FLAC waits in.

``source_check`` refuses a WAV that does not hold what its header and index row promise;
``flac_encoder`` turns it into a FLAC proven lossless (ffmpeg or in-process libFLAC), the only
code that drives either; ``temp_dir`` keeps the worker's temp folder its own (0700, refused
when anyone else could write into it).
"""
