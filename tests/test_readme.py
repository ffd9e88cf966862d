"""The commands of the README and of docs/ work as written, so they cannot drift from the tool.

- The walk-through (the code block after `<!-- readme: run -->`, in docs/guide.md) runs in
  order, as written, in a fresh folder at smoke size; every command must exit 0.
- Every other command (blocks after `<!-- readme: compose -->`, at the reference size, on GPUs
  or SLURM) is checked without running it: its options are composed with the tool's own config
  (an option that does not exist, a group choice that is gone, fail), and `python -m bench`
  arguments are parsed by the bench's parser.
- Every relative link of the README and docs/ points at a file that exists.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"explore.train": "train", "explore.evaluate": "evaluate", "explore.posthoc": "posthoc",
           "launch.study": "launch_study", "analysis.report": "report"}


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def readme_blocks(kind: str) -> list[list[str]]:
    """The commands of the code blocks marked `<!-- readme: kind -->` in README.md and docs/,
    one list per block."""
    text = "\n".join(p.read_text() for p in DOCS)
    blocks = []
    for m in re.finditer(rf"<!-- readme: {kind} -->\s*```\w*\n(.*?)```", text, re.S):
        joined = m.group(1).replace("\\\n", " ")
        cmds = [line.split(" #")[0].strip() for line in joined.splitlines()]
        blocks.append([c for c in cmds if c.startswith("python -m ")])
    return blocks


def test_the_readme_marks_its_blocks():
    assert len(readme_blocks("run")) == 1 and len(readme_blocks("run")[0]) >= 6
    assert sum(len(b) for b in readme_blocks("compose")) >= 15


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path):
    """In order, in one Python process (tests/run_commands.py: each command as `python -m`
    runs it, one interpreter start for the block); every command must exit 0. explore.train,
    explore.evaluate, analysis.report and launch.study are also started as processes of their
    own by their tools' tests; explore.posthoc's `python -m` path is this one."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "tests" / "run_commands.py"),
                           *readme_blocks("run")[0]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    print(done.stdout)  # each command's time (pytest -s shows them)


def _as_overrides(args: list[str]) -> list[str]:
    """A command line's Hydra overrides as one composable job: a multirun's sweeps take their
    first value, hydra's own options are left out (compose has no hydra node to set)."""
    out = []
    for a in args:
        if a in ("-m", "--multirun") or a.startswith("--"):
            continue
        key, _, value = a.partition("=")
        if key.lstrip("+~").startswith("hydra"):
            continue
        if "," in value and not value.startswith("["):
            value = value.split(",")[0]
        out.append(f"{key}={value}" if _ else a)
    return out


@pytest.mark.parametrize("cmd", [c for b in readme_blocks("compose") + readme_blocks("run")
                                 for c in b])
def test_every_command_of_the_readme_composes(cmd):
    from explore.core.config import compose

    _, _, module, *args = shlex.split(cmd)  # python -m <module> <args>
    if module == "bench.gpu_check":
        from bench.gpu_check import parse_args

        parse_args(args)
        return
    if module == "explore.fetch":
        from explore.fetch import parse_args as fetch_args

        fetch_args(args)
        return
    if module == "bench" or module.startswith("bench."):
        from bench.hotpath.run import parse_args

        if module == "bench":
            parse_args(args)
        return
    assert module in CONFIGS, f"{cmd}: not a command of this tool"
    compose(CONFIGS[module], _as_overrides(args))


def test_every_link_of_the_readme_and_docs_exists():
    for page in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links {target}, not there"
