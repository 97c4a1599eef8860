"""What the tests share: `helpers` (plain functions and data, each defined once), `fakes`
(in-memory stand-ins for the unit tier), `faultkit` (the fault suite's figures and checks)
and `fixtures/` (the real servers, registered in tests/conftest.py with `pytest_plugins`)."""
