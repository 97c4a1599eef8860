"""Trees (transfer/manifests.py): what an EPN folder holds, and how two trees differ."""

from __future__ import annotations

import os

from assyncy_dagster.transfer.manifests import (
    Entry,
    Kind,
    compare_trees,
    files_of,
    leaving_links,
    local_tree,
    resolve_link,
    tree_digest,
    with_checksums,
)


def test_local_tree_applies_the_transfer_filter_at_every_level(tmp_path):
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
    (tmp_path / "empty").mkdir()
    os.mkfifo(tmp_path / "fifo")
    tree = local_tree(tmp_path)
    assert {p: e.size for p, e in files_of(tree).items()} == {"frames/img_0001.cbf": 3, ".info": 1, "frames/.info": 2}
    assert tree["link"] == Entry(Kind.LINK, mtime=tree["link"].mtime, target="frames")
    assert tree["empty"].kind is Kind.DIR and tree["frames"].kind is Kind.DIR
    assert tree["fifo"].kind is Kind.SPECIAL
    assert tree["frames/img_0001.cbf"].mtime == int((tmp_path / "frames/img_0001.cbf").stat().st_mtime)


def test_local_tree_of_missing_destination_is_empty(tmp_path):
    assert local_tree(tmp_path / "absent") == {}


def test_compare_trees_reports_missing_size_mtime_links_and_folders_but_tolerates_extra():
    source = {
        "a": Entry(Kind.FILE, 1, 100),
        "b": Entry(Kind.FILE, 2, 100),
        "c": Entry(Kind.FILE, 3, 100),
        "d": Entry(Kind.FILE, 4, 100),
        "l": Entry(Kind.LINK, target="a"),
        "empty": Entry(Kind.DIR),
    }
    home = {
        "a": Entry(Kind.FILE, 1, 100),
        "b": Entry(Kind.FILE, 5, 100),
        "d": Entry(Kind.FILE, 4, 101),
        "l": Entry(Kind.LINK, target="b"),
        "z": Entry(Kind.FILE, 9, 1),
    }
    diff = compare_trees(source, home)
    assert not diff.ok
    assert diff.missing == ["c"]
    assert diff.size_mismatch == [("b", 2, 5)]
    assert diff.mtime_mismatch == ["d"]
    assert diff.missing_links == ["l"]
    assert diff.missing_dirs == ["empty"]
    assert diff.extra == ["z"]
    summary = diff.summary()
    assert "1 missing" in summary and "missing: c" in summary
    assert "b (source 2 bytes, destination 5 bytes)" in summary
    assert "modification time differs: d" in summary and "folder missing: empty" in summary
    assert compare_trees({"a": Entry(Kind.FILE, 1, 5)}, {"a": Entry(Kind.FILE, 1, 5), "z": Entry(Kind.FILE)}).ok


def test_tree_summary_is_limited():
    diff = compare_trees({f"f{i:03d}": Entry(Kind.FILE, 1, 1) for i in range(100)}, {})
    summary = diff.summary(limit=5)
    assert summary.count("missing: f") == 5 and "95 more: missing" in summary


def test_a_link_is_judged_by_where_it_resolves_not_by_its_text():
    tree = {
        "a": Entry(Kind.DIR),
        "a/b": Entry(Kind.DIR),
        "a/b/c": Entry(Kind.LINK, target="../.."),  # the EPN's top: inside
        "a/b/L": Entry(Kind.LINK, target="c/../../.."),  # through c, then one level above the top
        "a/b/M": Entry(Kind.LINK, target="c/../.."),  # lexically `a`, really the EPN's parent
        "x": Entry(Kind.FILE, 3, 1),
        "a/y": Entry(Kind.LINK, target="../x"),
        "abs": Entry(Kind.LINK, target="/etc/passwd"),
        "up": Entry(Kind.LINK, target="../other-epn/frame.cbf"),
        "loop": Entry(Kind.LINK, target="loop"),
    }
    assert resolve_link(tree, "a/b/c") == ""
    assert resolve_link(tree, "a/y") == "x"
    assert leaving_links(tree) == ["a/b/L", "a/b/M", "abs", "loop", "up"]


def test_the_digest_sees_a_same_size_rewrite_by_its_mtime():
    before = {"f": Entry(Kind.FILE, 10, 1000), "l": Entry(Kind.LINK, target="f")}
    assert tree_digest(before) == tree_digest(dict(before))
    assert tree_digest(before) != tree_digest({**before, "f": Entry(Kind.FILE, 10, 1001)})
    assert tree_digest(before) != tree_digest({**before, "l": Entry(Kind.LINK, target="g")})


def test_recorded_checksums_fill_only_files_unchanged_since():
    tree = {
        "same": Entry(Kind.FILE, 1, 10),
        "rewritten": Entry(Kind.FILE, 1, 11),
        "sent": Entry(Kind.FILE, 1, 10, checksum="new"),
    }
    recorded = {
        "same": Entry(Kind.FILE, 1, 10, checksum="aa"),
        "rewritten": Entry(Kind.FILE, 1, 10, checksum="bb"),
        "sent": Entry(Kind.FILE, 1, 10, checksum="old"),
    }
    merged = with_checksums(tree, recorded.items())
    assert merged["same"].checksum == "aa"
    assert merged["rewritten"].checksum is None
    assert merged["sent"].checksum == "new"
