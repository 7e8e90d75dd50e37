"""The package installs under one import namespace (`fraudloop.*`), beside an environment's own `models`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


SHIPPED = ("dags", "examples", "models", "pipelines", "streaming")  # the folders the package installs


def copy_source(source: Path) -> Path:
    """What a build needs, copied (building in the checkout would leave build files in it)."""
    for part in SHIPPED:
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    return source


def test_every_python_package_of_the_source_is_installed():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"fraudloop." + ".".join(init.parent.relative_to(ROOT).parts)
             for part in SHIPPED for init in (ROOT / part).rglob("__init__.py")}
    assert found - listed == set(), "packages left out of pyproject.toml's [tool.setuptools] packages"


def test_pip_install_into_an_environment_with_another_models_package_keeps_both(tmp_path):
    other = tmp_path / "other"
    for name in ("models", "pipelines", "streaming"):  # names a data-science environment often has already
        (other / name).mkdir(parents=True)
        (other / name / "__init__.py").write_text(f"OWNER = 'someone else\\'s {name}'\n")
    source = copy_source(tmp_path / "source")
    site = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            "--no-deps", "--target", str(site), str(source)], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    assert sorted(p.name for p in (site / "fraudloop").iterdir()) == list(SHIPPED)
    assert not (site / "models").exists()  # nothing installed under the generic top-level names
    # -S: this interpreter's site-packages only for the dependencies (its .pth files, the checkout's editable
    # install among them, unread), so what is imported is what pip just installed.
    probe = ("import models, pipelines, streaming, fraudloop.models.features as f, fraudloop.streaming.rules as r, "
             "fraudloop.pipelines.cli as c; from fraudloop.models.schema import load_schema; "
             "print(models.OWNER, pipelines.OWNER, streaming.OWNER, f.__file__, r.__file__, c.__file__, "
             "load_schema('transaction.v1.json')['title'] != '')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(other), str(site), sysconfig.get_paths()["purelib"]])}
    done = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "someone else's models someone else's pipelines someone else's streaming" in out
    assert out.count(str(site / "fraudloop")) == 3 and out.strip().endswith("True")
