"""The `assyncy` command's refusals that need nothing running: an invalid config file, no DAGSTER_HOME,
an EPN name `fixity-audit` cannot audit."""

from assyncy_dagster.cli import main


def test_check_config_reports_an_invalid_file(tmp_path, capsys):
    bad = tmp_path / "config.yml"
    bad.write_text("epn_cap_map: {'12a': x}\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert 'epn_cap_map."12a"' in err and "equipment: missing" in err


def test_add_epn_without_dagster_home_is_refused(monkeypatch, capsys):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["add-epn", "12282a"]) == 2
    assert "DAGSTER_HOME" in capsys.readouterr().err


def test_fixity_audit_refuses_an_invalid_epn_and_audits_nothing(capsys, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", "/nonexistent")
    assert main(["fixity-audit", "12282a", "../../x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refused, nothing audited:") and "../../x" in err


def test_fixity_audit_without_dagster_home_refuses_a_throwaway_instance(capsys, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["fixity-audit"]) == 2
    assert "DAGSTER_HOME is not set" in capsys.readouterr().err
