"""Install pyproject.toml's build requirements into the running Python, so `make build`,
`make sanitize` and `make fuzz` (which build without pip's build isolation) work in any venv."""

import subprocess
import sys
import tomllib
from pathlib import Path

requires = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                       *requires["build-system"]["requires"]])
