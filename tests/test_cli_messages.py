"""Messages a user test found misleading: each now one clear line that names the input and the fix."""

from __future__ import annotations

from click.testing import CliRunner

from toolkit.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_retrain_help_names_no_option_retrain_lacks():
    """retrain shares the risk-mode help with calibrate but has no --risk-procedure of its own."""
    retrain_help = _run("retrain", "--help").stdout
    assert "--risk-procedure" not in retrain_help
    assert "picked by the sample count" in " ".join(retrain_help.split())
    assert "see --risk-procedure" in " ".join(_run("calibrate", "--help").stdout.split())


def test_calibrate_help_prints_a_single_percent_sign():
    """click does not %-format help strings, so a doubled %% reached the screen as it was written."""
    calibrate_help = " ".join(_run("calibrate", "--help").stdout.split())
    assert "spends 20% of --data" in calibrate_help and "%%" not in calibrate_help
