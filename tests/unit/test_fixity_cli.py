"""`assyncy fixity-audit` refuses what it cannot audit before touching any instance."""

from assyncy_dagster.cli import main


def test_an_invalid_epn_is_refused_and_nothing_audited(capsys, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", "/nonexistent")
    assert main(["fixity-audit", "12282a", "../../x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refused, nothing audited:") and "../../x" in err


def test_without_dagster_home_it_refuses_to_use_a_throwaway_instance(capsys, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["fixity-audit"]) == 2
    assert "DAGSTER_HOME is not set" in capsys.readouterr().err
