"""The distribution's own namespace (``silvasonic-uploader``): the command line lives here, as
``silvasonic_uploader.cli``, so that its name cannot clash with another installed ``cli``.
``python -m silvasonic_uploader`` is the ``silvasonic-uploader`` console script."""
