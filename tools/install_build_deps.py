"""Install pyproject.toml's build requirements into the running Python, so `make build`,
`make sanitize` and `make fuzz` (which build without pip's build isolation) work in any venv.

With extra names (``python tools/install_build_deps.py bench``) it installs those optional
dependencies instead: what ``pip install -e '.[bench]'`` adds to a venv that has kstore
already, without building the compiled core once more (.ci/run)."""

import subprocess
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
extras = project["project"]["optional-dependencies"]
unknown = [name for name in sys.argv[1:] if name not in extras]
if unknown:
    sys.exit(f"no optional dependencies named {', '.join(unknown)} in pyproject.toml "
             f"(there are: {', '.join(extras)})")
if sys.argv[1:]:
    requires = [req for name in sys.argv[1:] for req in extras[name]]
else:
    requires = project["build-system"]["requires"]
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *requires])
