"""Fixtures for the real servers the tests talk to.

Each server fixture lives in its own `fixtures_*.py` module beside this file.
"""

from fixtures_portal import *  # noqa: F401,F403
from fixtures_sshd import *  # noqa: F401,F403
from fixtures_smtp import *  # noqa: F401,F403
from fixtures_stack import *  # noqa: F401,F403
from fixtures_postgres import *  # noqa: F401,F403
