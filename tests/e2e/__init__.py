"""End to end through the real commands: the dagster CLI, dagster-daemon, the webserver in a browser,
the demo, mxsync/epnalert, and Celery workers (all marked slow)."""
