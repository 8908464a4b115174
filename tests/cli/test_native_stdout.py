"""``--json`` output stays parseable when native libraries (HiGHS) print to file descriptor 1."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, os
from aios.cli.main import native_stdout_to_stderr
with native_stdout_to_stderr():
    os.write(1, b"HighsMipSolverData::noise\\n")  # what the C++ solver does behind Python's back
    print(json.dumps({"avg_jct_h": 1.5}))
print("after")
"""


def test_native_prints_go_to_stderr_and_json_to_stdout() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first, after = out.stdout.splitlines()
    assert json.loads(first) == {"avg_jct_h": 1.5} and after == "after"
    assert "HighsMipSolverData::noise" in out.stderr
