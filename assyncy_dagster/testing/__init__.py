"""Real servers for the tests and the demo: nothing here is a mock."""

from .sshd import LocalSshd, SshdError, make_source_tree, missing_binaries

__all__ = ["LocalSshd", "SshdError", "make_source_tree", "missing_binaries"]
