"""README.md's code runs as written: the library snippet and the "add your own posterior" example
(the module, then its two shell commands), in a folder holding a tiny real-format Fashion-MNIST
under `data/`, as `make data` lays it out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_eval_multiswag import write_tiny_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


def _blocks(section: str | None = None) -> list[tuple[str, str]]:
    """(language, code) of the fenced blocks of README.md, optionally of one `##` section."""
    text = (ROOT / "README.md").read_text()
    if section is not None:
        text = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", text, flags=re.DOTALL)


@pytest.fixture
def workdir(tmp_path):
    write_tiny_fashion_mnist(tmp_path / "data")
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    return tmp_path


def _environment() -> dict:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PYTHONPATH": str(ROOT), "PATH": path}


def _run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, env=_environment(), timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_library_snippet_runs_as_written(workdir):
    (code,) = [c for lang, c in _blocks("Using it") if lang == "python"]
    stdout = _run([sys.executable, "-c", code], workdir)
    assert re.search(r"accuracy of one SWAG draw: 0\.\d{3}", stdout)
    assert (workdir / "swag.pt").is_file()


def test_add_your_own_posterior_runs_as_written(workdir):
    (module,) = [c for lang, c in _blocks("Add your own posterior") if lang == "python"]
    (shell,) = [c for lang, c in _blocks("Add your own posterior") if lang == "bash"]
    (workdir / "my_posterior.py").write_text(module)
    _run(["bash", "-euo", "pipefail", "-c", shell], workdir)
    results = json.loads((workdir / "runs" / "iso" / "isotropic.json").read_text())
    assert results["num_samples"] == 3
    assert 0 <= results["curves"]["clean"][0]["accuracy"] <= 1
