"""ignore.yml and alerted.yml: atomic, locked, seed-shaped."""

import pytest
import yaml

from assyncy_dagster.state import IGNORE_KEY, StateFileError, add_epns, read_epns


def test_missing_file_reads_as_empty(tmp_path):
    assert read_epns(tmp_path / "ignore.yml") == set()


def test_entries_are_kept_sorted_in_the_seed_shape(tmp_path):
    path = tmp_path / "ignore.yml"
    path.write_text("---\ncomment: kept by hand\npreviouslySynched:\n- 12282b\n")
    assert add_epns(path, ["900a", "12282a", "12282b"]) == ["900a", "12282a"]
    data = yaml.safe_load(path.read_text())
    assert data == {"comment": "kept by hand", IGNORE_KEY: ["900a", "12282a", "12282b"]}


def test_a_symlinked_state_file_is_updated_through_its_link(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "ignore.yml"
    target.write_text("---\npreviouslySynched:\n- 12282a\n")
    link = tmp_path / "ignore.yml"
    link.symlink_to(target)
    assert add_epns(link, ["12282b"]) == ["12282b"]
    assert link.is_symlink(), "the admin's link must stay a link"
    assert yaml.safe_load(target.read_text())[IGNORE_KEY] == ["12282a", "12282b"]
    assert read_epns(link) == {"12282a", "12282b"}


@pytest.mark.parametrize(
    "content",
    [
        b"",  # what a crash in the middle of the old tool's in-place rewrite leaves
        b"---\npreviouslySynched:\n- 12282a\n- [",  # cut short
        b"\x00" * 40,  # blocks allocated, never written
        b"\xff\xfepreviouslySynched: []",  # not UTF-8
        b"- 12282a\n",  # a list, not the seed's mapping
    ],
)
def test_a_broken_ignore_yml_is_refused_naming_it_never_read_as_empty(tmp_path, content):
    # Read as empty, it would have every EPN copied again.
    path = tmp_path / "ignore.yml"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match=f"^{path}: .*repair or restore it by hand"):
        read_epns(path)
    with pytest.raises(StateFileError):
        add_epns(path, ["12282b"])
    assert path.read_bytes() == content, "left for the admin, not moved or rewritten"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ignore.yml", "ignore.yml.lock"]
