"""The EPN's manifest at home (transfer/bag.py): written beside data/, read back as written."""

from __future__ import annotations

from assyncy_dagster.transfer.bag import RECORD_NAME, manifest_name, read_manifest
from assyncy_dagster.transfer.manifests import Entry, Kind
from tests.support.helpers import write_manifest

TREE = {
    "frames": Entry(Kind.DIR, mtime=5),
    "frames/img 0001.cbf": Entry(Kind.FILE, 3, 100, checksum="a" * 32),
    "frames/old.cbf": Entry(Kind.FILE, 4, 101),  # brought home before checksums: size only
    "odd\tname%\n.cbf": Entry(Kind.FILE, 5, 102, checksum="b" * 32),
    "latest": Entry(Kind.LINK, mtime=7, target="frames/img 0001.cbf"),
}
INFO = {"EPN": "12282a", "Source-Host": "sftp.example"}


def test_the_manifest_reads_back_as_written_and_its_digest_is_stable(tmp_path):
    (tmp_path / "notes.txt").write_text("a user's own file")
    digest = write_manifest(tmp_path, TREE, algorithm="xxh128", info=INFO)
    recorded = read_manifest(tmp_path)
    assert recorded is not None and recorded.algorithm == "xxh128" and recorded.digest == digest
    assert recorded.tree == {p: e for p, e in TREE.items() if e.kind is not Kind.DIR}
    assert (tmp_path / "notes.txt").read_text() == "a user's own file"
    assert write_manifest(tmp_path, TREE, algorithm="xxh128", info={**INFO, "Bagged-At": "later"}) == digest


def test_the_xxh128_manifest_is_in_xxhsums_format_and_lists_links_as_their_file(tmp_path):
    write_manifest(tmp_path, TREE, algorithm="xxh128", info=INFO)
    lines = (tmp_path / manifest_name("xxh128")).read_text().splitlines()
    # The name with a newline cannot be written in xxhsum's format; the size-only file has no checksum.
    assert lines == ["a" * 32 + "  data/frames/img 0001.cbf", "a" * 32 + "  data/latest"]
    info = (tmp_path / "bag-info.txt").read_text()
    assert "Payload-Oxum: 12.3" in info and "Files-Verified-By-Size-Only: 1" in info
    assert "Files-Not-In-Checksum-Manifest: 1" in info
    assert not (tmp_path / "bagit.txt").exists()


def test_an_md5_manifest_makes_a_bag_with_bagits_encoding(tmp_path):
    write_manifest(tmp_path, TREE, algorithm="md5", info=INFO)
    assert (tmp_path / "bagit.txt").read_text().startswith("BagIt-Version: 1.0\n")
    lines = (tmp_path / manifest_name("md5")).read_text().splitlines()
    assert "b" * 32 + "  data/odd\tname%25%0A.cbf" in lines


def test_no_manifest_or_a_foreign_file_reads_as_none(tmp_path):
    assert read_manifest(tmp_path) is None
    (tmp_path / RECORD_NAME).write_text("something else\n")
    assert read_manifest(tmp_path) is None


def test_a_re_sync_that_changed_nothing_leaves_the_manifest_as_it_was(tmp_path):
    write_manifest(tmp_path, TREE, algorithm="xxh128", info={**INFO, "Bagged-At": "first"})
    again = write_manifest(tmp_path, TREE, algorithm="xxh128", info={**INFO, "Bagged-At": "second"})
    assert "Bagged-At: first" in (tmp_path / "bag-info.txt").read_text()
    assert again == read_manifest(tmp_path).digest
    changed = {**TREE, "frames/new.cbf": Entry(Kind.FILE, 1, 103, checksum="c" * 32)}
    write_manifest(tmp_path, changed, algorithm="xxh128", info={**INFO, "Bagged-At": "third"})
    assert "Bagged-At: third" in (tmp_path / "bag-info.txt").read_text()


def test_given_the_manifest_read_before_the_transfer_only_an_exact_match_leaves_it_as_it_was(tmp_path):
    """bring_home passes the manifest it read while ssh connected: any file or link more, fewer
    or different (a checksum, a size, a target) writes it again; only the same entries leave it."""
    write_manifest(tmp_path, TREE, algorithm="xxh128", info={**INFO, "Bagged-At": "first"})
    img = "frames/img 0001.cbf"
    changes = {
        "one file more": {**TREE, "frames/new.cbf": Entry(Kind.FILE, 1, 103, checksum="c" * 32)},
        "one file fewer": {p: e for p, e in TREE.items() if p != "frames/old.cbf"},
        "a checksum": {**TREE, img: TREE[img]._replace(checksum="d" * 32)},
        "a size": {**TREE, img: TREE[img]._replace(size=4)},
        "a link's target": {**TREE, "latest": TREE["latest"]._replace(target="frames/old.cbf")},
    }
    for round_, (change, tree) in enumerate(changes.items()):
        recorded = read_manifest(tmp_path)
        assert write_manifest(tmp_path, TREE, algorithm="xxh128", info={**INFO, "Bagged-At": "x"}, recorded=recorded)
        assert "Bagged-At: x" not in (tmp_path / "bag-info.txt").read_text(), "an exact match was written again"
        write_manifest(tmp_path, tree, algorithm="xxh128", info={**INFO, "Bagged-At": change}, recorded=recorded)
        assert f"Bagged-At: {change}" in (tmp_path / "bag-info.txt").read_text(), change
        assert read_manifest(tmp_path).tree == {p: e for p, e in tree.items() if e.kind is not Kind.DIR}, change
        write_manifest(tmp_path, TREE, algorithm="xxh128", info={**INFO, "Bagged-At": f"back {round_}"})
