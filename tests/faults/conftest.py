"""The fault suite's figures are collected by faultkit.figure and shown in a "fault figures"
section at the end of the run (also under xdist): the hooks are in tests/conftest.py.

Fixtures come from tests/conftest.py, which applies here too."""
