"""Manifests (transfer/manifests.py): what a destination holds, and how it differs from the source."""

from __future__ import annotations

from assyncy_dagster.transfer.manifests import compare_manifests, local_manifest


def test_local_manifest_applies_the_transfer_filter_at_every_level(tmp_path):
    for relative, content in {
        "frames/img_0001.cbf": b"abc",
        ".info": b"i",
        "frames/.info": b"ii",
        ".DS_Store": b"x",
        "frames/._img_0001.cbf": b"x",
        ".rsync-partial/big.cbf": b"x",
        "frames/.big.cbf.Ab12Cd": b"x",
        ".snapshot/old.cbf": b"x",
    }.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (tmp_path / "link").symlink_to("frames")
    assert local_manifest(tmp_path) == {"frames/img_0001.cbf": 3, ".info": 1, "frames/.info": 2}


def test_local_manifest_of_missing_destination_is_empty(tmp_path):
    assert local_manifest(tmp_path / "absent") == {}


def test_compare_manifests_reports_missing_and_size_mismatch_but_tolerates_extra():
    diff = compare_manifests({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "z": 9})
    assert not diff.ok
    assert diff.missing == ["c"]
    assert diff.size_mismatch == [("b", 2, 5)]
    assert diff.extra == ["z"]
    summary = diff.summary()
    assert "1 missing" in summary and "missing: c" in summary and "b (source 2 bytes, destination 5 bytes)" in summary
    assert compare_manifests({"a": 1}, {"a": 1, "z": 2}).ok


def test_manifest_summary_is_limited():
    diff = compare_manifests({f"f{i:03d}": 1 for i in range(100)}, {})
    summary = diff.summary(limit=5)
    assert summary.count("missing:") == 5 and "95 more missing" in summary
