"""Every job spec under examples/ is valid as shipped (a user's first `aios submit` must not fail on our file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aios.cli.jobs import load_spec_file
from aios.scheduler.spec import validate_spec

EXAMPLES = sorted((Path(__file__).parent.parent.parent / "examples").glob("*.*"))


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"digits-train.yaml", "serve-digits.yaml", "train-bert.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_a_valid_job_spec(path: Path) -> None:
    spec = validate_spec(load_spec_file(str(path)))
    assert spec.name and spec.tenant
