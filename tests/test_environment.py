"""environment.yml delegates Python packages to pyproject.toml; keep them in step."""
import re
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]


def test_environment_delegates_to_pyproject():
    env = (ROOT / "environment.yml").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "-e .[dev]" in env, "environment.yml must install the project with its dev extra"
    assert "dev" in project["optional-dependencies"]
    py = re.search(r"python=(\d+\.\d+)", env).group(1)
    low = re.search(r">=(\d+\.\d+)", project["requires-python"]).group(1)
    assert tuple(map(int, py.split("."))) >= tuple(map(int, low.split(".")))


def test_torch_pinned_exactly():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = [d for d in deps if d.startswith("torch")]
    assert torch == ["torch==2.13.0"], "an open torch range downloads a multi-GB CUDA build"


def test_the_test_command_installs_the_ray_extra():
    """The Ray executor's tests run in CI: the README's test command and .ci/run install it."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("ray==") for d in extras["ray"]), "pin ray exactly"
    readme = (ROOT / "README.md").read_text()
    test_cmd = next(line for line in readme.splitlines() if "python -m pytest" in line)
    assert '".[dev,ray]"' in test_cmd and '".[dev,ray]"' in (ROOT / ".ci" / "run").read_text()
