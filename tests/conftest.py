"""Shared pytest fixtures: the project root on sys.path and the reference fixtures folder.

tests/fixtures holds tensors computed by the official Wan2.2 code (see tests/fixtures/README.md
for what each file holds and how to regenerate it); it ships with the repository, so these
tests run in any clone. Set VIDEORLVR_FIXTURES to check against another copy (for example
files regenerated at larger sizes).
"""
import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (see train.py): the suite and a training run
# sharing the cores then slow in proportion. Set before anything loads torch; subprocesses
# inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURES = Path(os.environ.get("VIDEORLVR_FIXTURES", ROOT / "tests" / "fixtures"))


@pytest.fixture(scope="session")
def oracle_dir() -> Path:
    """The folder of official-implementation reference tensors (tests/fixtures)."""
    if not (FIXTURES / "tiny_dit.safetensors").is_file():
        raise FileNotFoundError(
            f"{FIXTURES}: the reference fixtures are missing (they ship in tests/fixtures; "
            "regenerate them with tests/fixtures/make_fixtures.py)"
        )
    return FIXTURES
