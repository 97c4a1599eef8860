"""Plain logic and the assets called directly, with in-memory fakes: nothing is started (see conftest.py)."""
