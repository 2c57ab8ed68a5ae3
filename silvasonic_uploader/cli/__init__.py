"""The ``silvasonic-uploader`` click commands, each in its own module and imported only when it
runs (``main.COMMANDS``); the ones that need Celery import it inside themselves."""
