"""The generated protobuf package matches proto/ (run `nox -s protos` after editing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_generated_code_matches_the_proto_sources() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "protogen.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
