"""README.md as a newcomer meets it: the first command, exactly as written, makes a venv in a
copy of this checkout and runs the main job; then every shell and Python block of the README
runs top to bottom in that venv and directory, twice (a second run must not trip over what the
first left: topics that exist, files that are there), and the main job runs a second time
(by a README block that runs it, or else after the blocks).

The one block not run is the test command (it is this test run), and blocks preceded by
``<!-- readme-test: skip (why) -->``, which must say why; `.ci/run` must run the README's test
command exactly, before it installs anything else."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"(?:<!-- readme-test: skip \((?P<why>[^)]*)\) -->\n)?"
                   r"```(?P<lang>[a-z]+)\n(?P<body>.*?)```", re.S)
BLOCKS = [(m["lang"], m["body"], m["why"]) for m in FENCE.finditer(README.read_text())]
INSTALL = "python3 -m venv .venv && . .venv/bin/activate && pip install . && kstore bench"
TESTS = "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && python -m pytest"
WALKTHROUGH_TIMEOUT = 900


def test_readme_gives_the_two_commands_first():
    assert [b.strip() for _, b, _ in BLOCKS[:2]] == [INSTALL, TESTS]
    assert all(lang in ("sh", "python") for lang, _, _ in BLOCKS)
    assert sum(lang == "python" for lang, _, _ in BLOCKS) >= 2


def test_skipped_blocks_say_why():
    skipped = [(b, why) for _, b, why in BLOCKS if why is not None]
    for body, why in skipped:
        assert len(why.strip()) > 20, body
    assert len(skipped) <= 3  # the long measurements and the make targets (CI runs those)


def test_ci_runs_the_readme_test_command_before_installing_anything_else():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    at = next(i for i, ln in enumerate(lines) if ln.startswith(TESTS))
    assert lines[at].startswith(TESTS + " ||")  # a failure stops CI (set -e skips && lists)
    before = lines[:at]
    assert not any(re.search(r"\bpip\b|python3? -m venv|\. \.venv", ln) for ln in before), before


def _checkout_copy(dest: Path) -> None:
    """The files a clone would have (tracked ones, as in the work tree)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _env() -> dict[str, str]:
    """The caller's environment less its venv: the README starts from a plain shell."""
    env = dict(os.environ)
    venv = env.pop("VIRTUAL_ENV", None)
    if venv:
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                      if not p.startswith(venv))
    env.pop("PYTHONPATH", None)
    env.pop("KSTORE_DATA", None)
    return env


def _run(cmd: list[str], cwd: Path, what: str, log: Path) -> str:
    """Run one block in its own session, its stdout in a file (not a pipe: a server a failed
    block left in the background held the pipe open, and the run waited 15 minutes for it).
    Whatever the block left running is killed, and said in the log."""
    with open(log, "ab") as out, tempfile.TemporaryFile() as stdout:
        out.write(f"\n===== {what}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdin=subprocess.DEVNULL,
                                stdout=stdout, stderr=out, start_new_session=True)
        try:
            proc.wait(timeout=WALKTHROUGH_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            pytest.fail(f"{what} hung for {WALKTHROUGH_TIMEOUT}s; log: {log}")
        left = _kill_group(proc.pid)
        stdout.seek(0)
        text = stdout.read()
        out.write(text)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        pytest.fail(f"{what} exited with {proc.returncode}:\n{tail}")
    if left:
        with open(log, "ab") as out:
            out.write(f"(processes {what} left running were killed)\n".encode())
    return text.decode(errors="replace")


def _kill_group(pgid: int) -> bool:
    """SIGKILL what is left of a block's session; whether anything was."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout to copy")
def test_every_block_runs_twice_in_the_venv_of_the_first_command(tmp_path):
    work = tmp_path / "kstore"
    work.mkdir()
    _checkout_copy(work)
    log = tmp_path / "walkthrough.log"
    out = _run(["bash", "-e", "-c", INSTALL], work, "the first command", log)
    assert "exactly once" in out or "every" in out, out[-2000:]
    assert (work / ".venv" / "bin" / "kstore").exists() and (work / "kstore-data").is_dir()
    for round_ in (1, 2):
        for i, (lang, body, why) in enumerate(BLOCKS[2:], start=3):
            if why is not None:
                continue
            what = f"round {round_}, README block {i} ({lang}): {body.strip().splitlines()[0]}"
            if lang == "sh":
                _run(["bash", "-e", "-o", "pipefail", "-c", ". .venv/bin/activate\n" + body],
                     work, what, log)
            else:
                printed = _run([str(work / ".venv" / "bin" / "python"), "-c", body], work, what, log)
                assert printed.strip(), f"{what} printed nothing"
    # The main job a second time, over what the blocks left, unless a README block runs it
    # again itself: then it already ran once more in each round, the second time over the
    # first round's leftovers, and a further 10-million-event run would check nothing new.
    if not any(why is None and "kstore bench" in body for _, body, why in BLOCKS[2:]):
        _run(["bash", "-e", "-c", ". .venv/bin/activate && kstore bench"], work,
             "the main job, a second time", log)
