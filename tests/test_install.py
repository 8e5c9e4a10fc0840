"""dsn as a user installs it: the wheel built from this checkout, installed into a fresh virtual environment outside
the repository, runs synth -> data -> fit (built-in recipes by name) -> predict -> evaluate from an empty folder.

How the environment gets torch & co. without reinstalling them (minutes, gigabytes): the fresh venv is made without
pip, the wheel goes in with ``pip --python VENV install --no-deps`` (a true install: files under the venv's
site-packages, its ``dsn`` console script, its dist-info), and one ``.pth`` line in the venv's site-packages appends
the project environment's site-packages to ``sys.path``. ``--system-site-packages`` cannot do this: the project
environment is itself a venv, and that flag only reaches the base interpreter's packages. A ``.pth`` line adds a
folder without running the ``.pth`` files inside it, so the checkout's editable install of dsn stays inactive, and the
venv's own site-packages comes first: ``import dsn`` finds the installed wheel, which the test asserts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("dsn", "conf", "sweeps", "pyproject.toml", "README.md")


def _env() -> dict[str, str]:
    """The environment of every step: no PYTHONPATH (it would put a checkout's dsn first), no telemetry."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    return env


def _run(cmd, cwd, env, timeout=600):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} -> {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def _build_wheel(tmp: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of the checkout (the build's build/ and egg-info stay out of the repository)."""
    src = tmp / "src"
    src.mkdir()
    for name in SHIPPED:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)
    from packaging.version import Version

    isolation = [] if Version(version("setuptools")) < Version("77") else ["--no-build-isolation"]  # no download
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(tmp / "wheels"), str(src)],
         tmp, _env())
    return next((tmp / "wheels").glob("dsn-*.whl"))


def _venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, _env())
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         tmp, _env())
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp,
                     _env()).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_dsn_test_deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    return venv


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_installed_outside_the_checkout_runs_every_step(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("dsn/conf/demo.yaml", "dsn/conf/debug.yaml", "dsn/conf/recommended.yaml",
                    "dsn/conf/datasets/sleep-edf.yaml", "dsn/conf/models/usleep.yaml", "dsn/conf/slurm/cv-array.sh", "dsn/sweeps/kernels.yaml",
                    "dsn/trust/norms.yaml", "dsn/resources.py"):
        assert shipped in names, f"the wheel lacks {shipped}"
    venv = _venv(tmp_path, wheel)
    work = tmp_path / "work"  # an empty folder outside the repository: no conf/, no sweeps/
    work.mkdir()
    env = _env()
    dsn = str(venv / "bin" / "dsn")

    where = _run([str(venv / "bin" / "python"), "-c", "import dsn, dsn.resources as r; print(dsn.__file__); "
                  "print(r.root()); print(dsn.__version__)"], work, env).split("\n")
    site = str(venv / "lib")
    assert where[0].startswith(site) and where[1].startswith(site), where  # the installed wheel, not the checkout
    assert not where[0].startswith(str(ROOT))
    assert where[2] == version("dsn")
    assert _run([dsn, "--version"], work, env).strip() == f"dsn {version('dsn')}"
    assert "  recommended " in _run([dsn, "config", "list"], work, env)

    _run([dsn, "synth", "data", "--subjects", "4", "--hours", "1"], work, env)
    out = _run([dsn, "data", "data"], work, env)  # the default profile, read from the installed package
    assert f"data set 'sleep-edf' ({site}" in out and "4 recordings, 4 subjects" in out and "no problems" in out
    out = _run([dsn, "fit", "--config", "demo", "--config", "debug", "--data.data_dir", "data",
                "--data.progress", "false", "--net.small_kernel", "50", "--finetune.net.hidden_size", "16",
                "--finetune.net.shortcut_size", "32", "--finetune.batch_size", "2", "--finetune.seq_len", "5",
                "--pretrain.trainer.enable_progress_bar", "false", "--finetune.trainer.enable_progress_bar", "false"],
               work, env)
    assert "[pretrain]" in out and "[finetune]" in out
    ckpt = next(work.glob("mlruns/checkpoints/*/finetune/selected.ckpt"))

    _run([dsn, "predict", "data/SC4001E0-PSG.edf", "--model", str(ckpt), "--out", "pred"], work, env)
    assert list((work / "pred").glob("*.csv")), sorted(p.name for p in (work / "pred").iterdir())
    out = _run([dsn, "evaluate", "--model", str(ckpt), "--data.data_dir", "data"], work, env)
    assert "evaluate_summary.json" in out
    assert not (work / "conf").exists() and not (work / "sweeps").exists()
