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


NO_VECTORS = f"shared vectors not found at {VECTORS} (set KSTORE_SHARED to the shared/ folder)"


def vector_files() -> list:
    """The captured batches' file names, to parametrize over; without ../shared one parameter
    that skips saying why (an empty list would skip as "got empty parameter set")."""
    m = load_manifest()
    if m is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_VECTORS), id="no-vectors")]
    return [f["file"] for f in m["files"]]


def need(module: str, extra: str = "bench"):
    """Import an optional module or skip naming the extra that brings it."""
    return pytest.importorskip(
        module, reason=f"{module} is not installed: it comes with the [{extra}] extra "
                       f"(pip install -e '.[{extra}]')")


@pytest.fixture(scope="session")
def manifest():
    m = load_manifest()
    if m is None:
        pytest.skip(NO_VECTORS)
    return m


def pytest_collection_modifyitems(config, items):
    """The longest tests (marked slow) first: under pytest-xdist (addopts) each then starts at
    once on a worker of its own while the others share the rest, instead of starting last and
    running alone at the end. The order is otherwise the collection's."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
