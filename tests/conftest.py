import json
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The shared vectors sit beside the checkout (CI lays ../shared next to the clone).
SHARED = pathlib.Path(os.environ.get("KSTORE_SHARED", ROOT.parent / "shared"))
VECTORS = SHARED / "vectors"


def load_manifest():
    path = VECTORS / "manifest.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def manifest():
    m = load_manifest()
    if m is None:
        pytest.skip(f"shared vectors not found at {VECTORS} (set KSTORE_SHARED to the shared/ folder)")
    return m
