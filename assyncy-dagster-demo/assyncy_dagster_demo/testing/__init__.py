"""Real servers for the tests and the demo: nothing here is a mock.

They ship in assyncy-dagster-demo, not in the product's wheel, so that `assyncy demo` runs
outside a checkout; `scale_out`, `postgres` and `redis_server` are the scale-out tests' and need
the product's `scale-out` extra.
"""

from .sshd import LocalSshd, SshdError, make_source_tree, missing_binaries

__all__ = ["LocalSshd", "SshdError", "make_source_tree", "missing_binaries"]
