"""The test kit's process listing (assyncy_dagster_demo/testing/processes.py): each listing reads
its own attributes, even while another listing is under way (a sampler thread beside a test)."""

import os

import psutil

from assyncy_dagster_demo.testing.processes import processes


def own(listing) -> dict:
    return next(info for proc, info in listing if proc.pid == os.getpid())


def test_psutil_s_shared_info_is_what_two_listings_at_once_would_trip_on():
    # The fault the kit steps around, shown in one thread: the second listing's attributes
    # replace the first's on the Process object both get for this pid.
    first = next(p for p in psutil.process_iter(["name"]) if p.pid == os.getpid())
    next(p for p in psutil.process_iter(["status"]) if p.pid == os.getpid())
    assert "name" not in first.info


def test_two_listings_at_once_each_keep_what_they_asked_for():
    first, second = processes("name", "cmdline"), processes("status")
    asked_first = own(first)
    asked_second = own(second)
    assert set(asked_first) == {"name", "cmdline"} and asked_first["name"] == psutil.Process().name()
    assert set(asked_second) == {"status"}
