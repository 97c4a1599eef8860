"""Real servers for the tests and the demo: nothing here is a mock.

They ship in the wheel so that `assyncy demo` runs outside a checkout, and need the
`demo` extra (aiosmtpd for the SMTP sink); `scale_out`, `postgres` and `redis_server`
are the scale-out tests' and need the `test` extra. The production code (definitions,
mxsync, epnalert) never imports this package.
"""

from .sshd import LocalSshd, SshdError, make_source_tree, missing_binaries

__all__ = ["LocalSshd", "SshdError", "make_source_tree", "missing_binaries"]
