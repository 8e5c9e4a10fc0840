"""The `dsn` command line: help, one parsing style, synth, ui."""

from __future__ import annotations

import re
import subprocess
import sys

import mne
import pytest

from dsn.cli import main


def test_help_is_fast_and_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("synth", "fit", "ui"))
    # `dsn --help` must not import the heavy stack
    code = "import sys, dsn.cli; dsn.cli.main(['--help']); print(sorted(m for m in ('torch','lightning','mlflow','mne') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip().endswith("[]")


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_synth_writes_files_mne_reads(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "x"), "--subjects", "2", "--hours", "1", "--seed", "3"]) == 0
    psgs = sorted((tmp_path / "x").glob("*-PSG.edf"))
    assert [p.name for p in psgs] == ["SC4001E0-PSG.edf", "SC4011E0-PSG.edf"]
    raw = mne.io.read_raw_edf(psgs[0], verbose="error")
    assert "EEG Fpz-Cz" in raw.ch_names and raw.info["sfreq"] == 100.0
    assert "wrote 2 recordings" in capsys.readouterr().out


def test_fit_reports_bad_data_dir_clearly(tmp_path, capsys):
    rc = main(["fit", "--config", "conf/debug.yaml", "--data.data_dir", str(tmp_path / "none"),
               "--tracking.home", str(tmp_path / "home")])
    err = capsys.readouterr().err
    assert rc == 1 and "data folder not found" in err and "dsn synth" in err


def test_ui_serves_project_store_on_loopback(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert main(["ui", "--tracking.home", str(tmp_path / "home"), "--port", "5123"]) == 0
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "mlflow", "ui"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{(tmp_path / 'home').resolve()}/mlflow.db"
    assert "http://127.0.0.1:5123/" in capsys.readouterr().out


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [["synth"], ["sweep"], ["predict"], ["registry", "list"], ["registry", "promote"],
                                  ["registry", "show"], ["registry", "upgrade"], ["export"], ["ui"], ["cv"]])
def test_every_command_help_lists_types_and_defaults(argv, capsys):
    out = _help(argv, capsys)
    entries = re.split(r"\n(?=  \S)", out.split("\noptions:", 1)[1] if "\noptions:" in out else out)
    opts = [e for e in entries if e.lstrip().startswith("--") and not e.lstrip().startswith(("--config", "--print_config"))
            and "Path to a configuration file" not in e and "Show the help for" not in e]  # jsonargparse's own
    assert opts, out
    for e in opts:  # every option says its type and its default (or that it is required)
        assert "type:" in e and ("default:" in e or "required" in e), e
    positional = out.split("positional arguments:", 1)[1].split("options:")[0] if "positional arguments:" in out else ""
    assert all("type:" in e for e in re.split(r"\n(?=  \S)", positional) if e.strip()), positional
    # one spelling: underscores and dotted keys, no dashes inside option names
    assert not re.findall(r"--\w+-\w+", out), out


def test_old_sweep_spellings_are_hidden_aliases(capsys):
    from dsn.workflows.cli_args import parse_command
    from dsn.workflows.sweep.command import build_parser as sweep_parser
    from dsn.workflows.sweep.command import split_overrides

    out = _help(["sweep"], capsys)
    assert "--n-trials" not in out and "--set" not in out and "--n_trials" in out
    p = sweep_parser()
    own = {s for a in p._actions for s in a.option_strings}
    rest, over = split_overrides(["s.yaml", "--n-trials", "3", "--set", "data.n_folds=4", "--data.data_dir", "d",
                                  "--net.drop_prob=0.3", "--tracking.home", "h"], own)
    assert over == {"data.n_folds": "4", "data.data_dir": "d", "net.drop_prob": "0.3"}
    a = parse_command(p, rest, aliases={"--n-trials": "--n_trials"})
    assert (a.spec, a.n_trials, a.tracking_home, a.workers) == ("s.yaml", 3, "h", 1)
    from dsn.errors import ConfigError

    with pytest.raises(ConfigError, match="--set data.n_folds: use KEY=VALUE"):
        split_overrides(["s.yaml", "--set", "data.n_folds"], own)


def test_repeated_list_flag_appends():
    from dsn.workflows.cli_args import rewrite_aliases

    assert rewrite_aliases(["r.edf", "--hypnogram", "a", "--hypnogram", "b"], appends=("--hypnogram",)) == [
        "r.edf", "--hypnogram+", "a", "--hypnogram+", "b"]
    assert rewrite_aliases(["--hypnogram", "[a, b]"], appends=("--hypnogram",)) == ["--hypnogram", "[a, b]"]
