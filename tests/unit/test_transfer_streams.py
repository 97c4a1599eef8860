"""Sharing one large EPN out over parallel rsync streams."""

from assyncy_dagster.transfer.streams import MIB, plan_streams


def test_one_stream_small_epns_and_single_files_use_one_rsync():
    big = {f"f{i}": 300 * MIB for i in range(8)}
    assert plan_streams(big, 1, 1024) is None
    assert plan_streams({f"f{i}": MIB for i in range(8)}, 4, 1024) is None  # 8 MiB < 1 GiB
    assert plan_streams({"only.h5": 4096 * MIB}, 4, 1024) is None  # one file cannot be split


def test_chunks_cover_every_file_once_and_balance_bytes():
    manifest = {f"run_{i % 8}/img_{i:03d}.cbf": (i % 5 + 1) * MIB for i in range(64)}
    plan = plan_streams(manifest, 4, 0)
    assert plan is not None and plan.streams == 4
    every = [path for chunk in plan.chunks for path in chunk]
    assert sorted(every) == sorted(manifest) and len(every) == len(set(every))
    assert list(plan.chunk_bytes) == [sum(manifest[p] for p in chunk) for chunk in plan.chunks]
    assert max(plan.chunk_bytes) - min(plan.chunk_bytes) <= max(manifest.values())


def test_never_more_streams_than_files():
    plan = plan_streams({"a": 2 * MIB, "b": MIB}, 8, 0)
    assert plan is not None and plan.streams == 2
    assert plan.chunks == (("a",), ("b",))


def test_threshold_is_inclusive():
    manifest = {"a": 512 * MIB, "b": 512 * MIB}
    assert plan_streams(manifest, 2, 1024) is not None
    assert plan_streams(manifest, 2, 1024.5) is None
