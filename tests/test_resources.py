"""dsn.resources: the shipped recipes, profiles and sweeps by name; `dsn config`; the wheel's package list; the version."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from dsn import resources
from dsn.cli import main as cli
from dsn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_lists_name_the_checkouts_files():
    assert resources.root() == ROOT  # run from a checkout: its own conf/ and sweeps/
    assert resources.list_recipes() == sorted(p.stem for p in (ROOT / "conf").glob("*.yaml"))
    assert {"demo", "debug", "paper", "recommended", "recommended-eog", "gpu"} <= set(resources.list_recipes())
    assert {"sleep-edf", "nsrr", "bids", "generic"} <= set(resources.list_profiles())
    assert {"kernels", "recipe", "tiny"} <= set(resources.list_sweeps())
    assert resources.list_models() == ["attnsleep", "chambon2018", "deepsleepnet-transformer", "tinysleepnet", "usleep"]
    assert resources.list_slurm() == ["cv-array"]
    assert resources.recipe_path("demo") == ROOT / "conf" / "demo.yaml"
    assert resources.profile_path("nsrr.yaml") == ROOT / "conf" / "datasets" / "nsrr.yaml"
    assert resources.sweep_path("kernels") == ROOT / "sweeps" / "kernels.yaml"
    assert resources.slurm_path() == ROOT / "conf" / "slurm" / "cv-array.sh"


def test_unknown_name_is_one_line_naming_the_builtins():
    with pytest.raises(ConfigError, match=r"'nope': no built-in recipe of that name\. Built-in: \[.*'demo'"):
        resources.recipe_path("nope")
    assert resources.find("recipe", "datasets/nsrr") is None  # a name never has folders


def test_resolve_recipe_an_existing_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout
    assert resources.resolve_recipe("demo") == str(ROOT / "conf" / "demo.yaml")
    assert resources.resolve_recipe("demo.yaml") == str(ROOT / "conf" / "demo.yaml")
    assert resources.resolve_recipe("conf/demo.yaml") == str(ROOT / "conf" / "demo.yaml")  # as sweeps' base: lists
    assert resources.resolve_recipe("conf/models/usleep.yaml") == str(ROOT / "conf" / "models" / "usleep.yaml")
    assert resources.resolve_recipe("other/demo.yaml") == "other/demo.yaml"  # left for the parser's own error
    assert resources.resolve_recipe("nope") == "nope"
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "demo.yaml").write_text("seed_everything: 7\n")
    (tmp_path / "demo").write_text("seed_everything: 8\n")
    assert resources.resolve_recipe("conf/demo.yaml") == "conf/demo.yaml"
    assert resources.resolve_recipe("demo") == "demo"


def test_config_names_stack_from_any_folder(tmp_path, monkeypatch):
    from dsn import config

    monkeypatch.chdir(tmp_path)
    cfg = config.parse(["--config", "demo", "--config=debug", "--data.data_dir", "d"])
    assert cfg.tracking.experiment == "dsn-debug" and cfg.pretrain.trainer.max_epochs == 1
    assert cfg.data.n_folds == 4  # from demo
    with pytest.raises(ConfigError, match="nope"):
        config.parse(["--config", "nope"])


def test_sweep_and_profile_by_name_from_any_folder(tmp_path, monkeypatch):
    from dsn.data.datasets import builtin_profiles, load_profile
    from dsn.workflows.sweep import load_spec

    monkeypatch.chdir(tmp_path)
    spec = load_spec("kernels")
    assert spec.name == "kernels" and spec.path == str(ROOT / "sweeps" / "kernels.yaml")
    assert load_spec("sweeps/tiny.yaml").base == ["conf/demo.yaml", "conf/debug.yaml"]
    with pytest.raises(ConfigError, match=r"sweep file not found \(built-in: \["):
        load_spec("nope")
    assert builtin_profiles() == resources.list_profiles()
    assert load_profile("nsrr").name == "nsrr"


def test_config_list_and_show(capsys):
    assert cli(["config", "list"]) == 0
    out = capsys.readouterr().out
    assert "recipes (" in out and "data-set profiles (" in out and "sweep specs (" in out and "SLURM scripts" in out
    for name in ("demo", "recommended", "sleep-edf", "nsrr", "kernels", "cv-array"):
        assert f"  {name} " in out
    assert cli(["config", "show", "demo"]) == 0
    assert capsys.readouterr().out == (ROOT / "conf" / "demo.yaml").read_text().rstrip("\n") + "\n"
    assert cli(["config", "show", "nsrr", "--kind", "profile"]) == 0
    assert "nsrr" in capsys.readouterr().out
    assert cli(["config", "list", "--kind", "sweep"]) == 0
    out = capsys.readouterr().out
    assert "kernels" in out and "demo" not in out.split("(read from")[0]
    assert cli(["config", "show", "nope"]) == 1
    assert "dsn config: error: 'nope': no built-in file of that name; built-in: " in capsys.readouterr().err


@pytest.mark.parametrize("action", ["list", "show"])
def test_config_help_lists_types_and_defaults(action, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["config", action, "--help"])
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "--kind" in out and "type:" in out and "default: null" in out


def test_pyproject_packages_name_every_package_and_the_shipped_folders():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    under_dsn = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "dsn").rglob("__init__.py")}
    assert under_dsn <= set(tool["packages"]), f"add to [tool.setuptools] packages: {sorted(under_dsn - set(tool['packages']))}"
    assert tool["package-dir"] == {"dsn.conf": "conf", "dsn.sweeps": "sweeps"}
    for kind, (folder, suffix) in resources.KINDS.items():
        package = "dsn." + folder.replace("/", ".")
        assert package in tool["packages"] and f"*{suffix}" in tool["package-data"][package], kind


def test_version_is_pyprojects(capsys):
    from importlib.metadata import version

    import dsn

    assert dsn.__version__ == version("dsn") == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dsn {dsn.__version__}"
