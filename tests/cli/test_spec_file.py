"""Reading a job spec file (`aios submit FILE`): what a user wrote, or an error naming the file and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from aios.cli.jobs import MAX_SPEC_FILE_BYTES, load_spec_file
from aios.common.errors import ConfigError


@pytest.mark.parametrize("name, text, message", [
    # the last of two equal keys was kept without a word: asked for 4 devices, the job ran on 1
    ("dup.yaml", "name: x\ndevices: 4\ncommand: [true]\ndevices: 1\n", "'devices' is given twice in one mapping"),
    ("dup.json", '{"name": "x", "devices": 4, "devices": 1}', "'devices' is given twice in one object"),
    ("nested.yaml", "name: x\nenv:\n" + "".join("  " * (i + 1) + "a:\n" for i in range(500)) + "  " * 501 + "b\n",
     "nested too deeply to be a job spec"),  # a RecursionError traceback
])
def test_a_spec_file_that_cannot_be_a_spec_is_said(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_spec_file(str(path))
    assert str(err.value).startswith(str(path))


def test_a_file_larger_than_any_spec_is_not_read_whole(tmp_path: Path) -> None:
    """`aios submit /dev/zero` grew to 4 GB; a 30 MB file took 20 s to say it was no mapping."""
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_SPEC_FILE_BYTES + 1))
    for path in (str(big), "/dev/zero"):
        with pytest.raises(ConfigError, match=r"larger than 4 MiB: no job spec is that large"):
            load_spec_file(path)
    fine = tmp_path / "fine.yaml"
    fine.write_text("name: x\ndevices: 2\ncommand: [\"true\"]\nenv: {A: '1'}\n")
    assert load_spec_file(str(fine)) == {"name": "x", "devices": 2, "command": ["true"], "env": {"A": "1"}}


def test_a_number_yaml_read_as_text_is_explained(tmp_path: Path) -> None:
    """YAML 1.1 reads 1e-3 as a string: the error said only "Expected `float`, got `str`"."""
    from aios.scheduler.spec import SpecError, validate_spec

    path = tmp_path / "lr.yaml"
    path.write_text("name: x\ntenant: t\ntrainer: {kind: mlp, lr: 1e-3}\n")
    with pytest.raises(SpecError, match=r"^trainer\.lr: Expected `float`, got `str` \('1e-3' was read as text: YAML "
                                        r"reads a number with an exponent only with a '\.' and a signed exponent; "
                                        r"write 1\.0e-3\)"):
        validate_spec(load_spec_file(str(path)))
    path.write_text("name: x\ntenant: t\ncommand: [run]\nmemory_gib_per_worker: 2e3\ndevices: '4'\n")
    with pytest.raises(SpecError, match=r"memory_gib_per_worker: .*write 2\.0e\+3\)"):
        validate_spec(load_spec_file(str(path)))
    # the advice is followed to a number: "write 1.0e5" was given for 1e5, and 1.0e5 is text to YAML 1.1 too
    path.write_text("name: x\ntenant: t\ncommand: [run]\nmax_runtime_s: 1.0e5\n")
    with pytest.raises(SpecError, match=r"max_runtime_s: .*write 1\.0e\+5\)"):
        validate_spec(load_spec_file(str(path)))
    path.write_text("name: x\ntenant: t\ncommand: [run]\nmax_runtime_s: 1.0e+5\n")
    assert validate_spec(load_spec_file(str(path))).max_runtime_s == 100000.0
    path.write_text("name: x\ntenant: t\ncommand: [run]\ndevices: '4'\n")
    with pytest.raises(SpecError, match=r"devices: Expected `int`, got `str` \('4' is text: write the number without"):
        validate_spec(load_spec_file(str(path)))


def test_yaml_anchors_and_merge_keys_still_read(tmp_path: Path) -> None:
    """A merge key's keys may be overridden in the mapping that merges them: that is no key given twice."""
    path = tmp_path / "merge.yaml"
    path.write_text("x-common: &common {tenant: t, devices: 2}\nname: x\ncommand: [run]\n<<: *common\ndevices: 4\n")
    assert load_spec_file(str(path)) == {"x-common": {"tenant": "t", "devices": 2}, "name": "x", "command": ["run"],
                                         "tenant": "t", "devices": 4}
