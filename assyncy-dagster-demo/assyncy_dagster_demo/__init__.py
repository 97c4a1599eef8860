"""assyncy-dagster-demo: local stand-ins of the Australian Synchrotron (a portal simulator, a read-only
SFTP host, an SMTP sink, PostgreSQL, Redis and Celery helpers) and `assyncy demo`, for the demo and
the tests. A distribution of its own: the product (assyncy-dagster) never imports it and its wheel
carries none of it; `pip install 'assyncy-dagster[demo]'` brings it, and its entry points add the
`demo` and `portal-sim` subcommands to `assyncy`.
"""
