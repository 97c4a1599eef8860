"""EPN rules: every hostile name is refused before it reaches a path or a command."""

import pytest

from assyncy_dagster.epn import (
    InvalidEpnError,
    UnmappedEpnError,
    base_number,
    destination_for,
    source_path_for,
    validate_epn,
)

MAP = {"12282": "ny79"}

HOSTILE = [
    "../x",
    "12282a/..",
    "12282a/../../etc",
    "1;rm -rf",
    "`x`",
    "$(id)",
    "",
    " ",
    "12282a ",
    " 12282a",
    "12282a\n",
    "12282A",
    "12282",
    "a12282",
    "12282-a",
    "١٢٢٨٢a",  # Arabic-Indic digits pass str.isdigit but are not EPNs
    "１２２８２a",  # full-width digits
    "12282é",
    "1" * 13 + "a",
    "12282" + "a" * 5,
    "x" * 10_000,
    "12282a\x00",
    "/12282a",
    "~12282a",
    None,
    12282,
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_epn_is_refused(value):
    with pytest.raises(InvalidEpnError):
        validate_epn(value)


@pytest.mark.parametrize("value", ["12282a", "1a", "12282ab", "999999999999zzzz"])
def test_well_formed_epn_is_accepted(value):
    assert validate_epn(value) == value


def test_base_number_drops_the_beamtime_letters():
    assert base_number("12282ab") == "12282"


def test_destination_is_root_project_epn_data(tmp_path):
    assert destination_for("12282b", MAP, tmp_path) == tmp_path.resolve() / "ny79" / "12282b" / "data"


def test_unmapped_epn_has_no_destination(tmp_path):
    with pytest.raises(UnmappedEpnError, match="13001"):
        destination_for("13001a", MAP, tmp_path)


@pytest.mark.parametrize("project", ["..", "../etc", "a/b", "", "."])
def test_unsafe_project_folder_is_refused(tmp_path, project):
    with pytest.raises(InvalidEpnError):
        destination_for("12282a", {"12282": project}, tmp_path)


def test_destination_through_a_symlinked_project_cannot_escape_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "ny79").symlink_to(tmp_path)
    with pytest.raises(InvalidEpnError, match="escapes"):
        destination_for("12282a", MAP, root)


def test_a_project_folder_linked_to_another_project_inside_root_is_refused(tmp_path):
    root = tmp_path / "root"
    (root / "ab12").mkdir(parents=True)
    (root / "ny79").symlink_to(root / "ab12")  # 12282a's data would land in ab12's folder
    with pytest.raises(InvalidEpnError, match="symlink"):
        destination_for("12282a", MAP, root)


def test_a_symlinked_destination_root_itself_is_fine(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "scratch").symlink_to(tmp_path / "real")
    assert destination_for("12282a", MAP, tmp_path / "scratch") == tmp_path / "real" / "ny79" / "12282a" / "data"


def test_source_path_has_trailing_slash_so_rsync_copies_contents():
    assert source_path_for("12282a", "/data/mx/") == "/data/mx/12282a/"
    with pytest.raises(InvalidEpnError):
        source_path_for("../x", "/data/mx")


def test_an_epn_this_site_repatriates_is_valid_and_mapped():
    from assyncy_dagster.epn import is_mapped_epn

    cap_map = {"12282": "ny79"}
    assert is_mapped_epn("12282a", cap_map)
    assert not is_mapped_epn("99999a", cap_map)  # valid, not mapped
    assert not is_mapped_epn("12282", cap_map)  # no suffix: not an EPN
    assert not is_mapped_epn(None, cap_map)
