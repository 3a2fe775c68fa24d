"""Packaging: pyproject.toml and environment.yml list the same packages; the console script exists."""

import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted |= set(extra)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {r for r in pip_block if not r.startswith("-e")}
    assert {_name(r) for r in listed} == {_name(r) for r in wanted}
    # Pins must agree exactly where they exist.
    pins = {_name(r): r for r in wanted}
    for req in listed:
        assert req == pins[_name(req)], f"environment.yml has {req!r}, pyproject.toml {pins[_name(req)]!r}"
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])


def test_known_good_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for pin in ("torch==2.14.1", "torchvision==0.29.1", "jupyter-book<2", "pydensecrf2"):
        assert pin in deps


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "esol_lib", "data", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "synth" in out.stdout and "coco" in out.stdout


def test_readme_links_only_files_in_the_repository():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#]+)\)", readme)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert "docs/DESIGN.md" in local and "docs/cams.png" in local and "LICENSE" in local
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links files that are not in the repository: {missing}"
    assert "../" not in readme, "README points outside the repository"
    assert len(readme.splitlines()) <= 150
