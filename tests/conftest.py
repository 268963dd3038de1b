"""Shared pytest fixtures: the project root on sys.path and the ../shared reference folder.

The reference material (../shared/oracle, ../shared/spec) sits beside the project checkout in the
development workplace only; a user's fresh clone does not have it, so tests that need it skip with
a message that says why. Set VIDEORLVR_SHARED to point at another copy.
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("VIDEORLVR_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def oracle_dir() -> Path:
    """../shared/oracle, or skip: the official-implementation reference tensors are not in the repo."""
    d = SHARED / "oracle"
    if not d.is_dir():
        pytest.skip(f"reference tensors not found at {d} (they live beside the development checkout, "
                    "not in the repository; set VIDEORLVR_SHARED to a copy of shared/ to run these tests)")
    return d
