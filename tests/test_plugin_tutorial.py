"""docs/plugins.md's tutorial runs as written: the shell blocks of its tutorial section, in order, in a fresh folder.

Every ``bash`` block of the section runs as one ``bash -e`` script, and every ``diff`` block is applied where it
stands, so a renamed option, a moved file or an edit that no longer fits the scaffold fails here. Two things are
changed, so that the test leaves the shared environment alone and takes seconds: ``pip install -e "NAME[dev]"`` installs
the package with ``pip --target`` into the temporary folder instead (its ``src/`` goes first on PYTHONPATH, so edits to
the source count, as with an editable install), and ``armm fit`` / ``armm baselines`` get overrides that shrink the
run to a one-layer model and a few steps.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from armm.plugins import DISABLE_AUTOLOAD_ENV

PAGE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HEADING = "## Tutorial:"
INSTALL = re.compile(r'pip install -e "([a-z][a-z0-9_-]*)\[dev\]"')
SHRINK = ("--trainer.max_steps 4 --trainer.val_check_interval 4 --trainer.limit_val_batches 1 "
          "--trainer.enable_progress_bar false --model.overrides '{\"n_layer\": 1, \"n_head\": 2, \"d_model\": 32}'")


def tutorial_blocks() -> list[tuple[str, str]]:
    """(language, text) of every bash and diff block of the tutorial section, in page order."""
    text = PAGE.read_text()
    start = text.index(f"\n{HEADING}")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end >= 0 else None]
    return re.findall(r"```(bash|diff)\n(.*?)```", section, re.S)


def shell_line(line: str) -> str:
    """A line of a bash block as the test runs it: the install redirected, training shrunk; any other pip refused."""
    if installing := INSTALL.fullmatch(line.split("  #")[0].strip()):
        return f'"$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-index --target site ./{installing[1]}'
    assert not re.match(r"\s*(python -m )?pip ", line), f"the test would not know how to run this install: {line}"
    command = re.fullmatch(r"(armm (?:fit|baselines) [^#]*?)(\s*#.*)?", line)
    return f"{command[1]} {SHRINK}" if command else line


def apply_diff(diff: str, root: Path) -> None:
    """Apply a unified diff (paths under ``root``): each hunk's old lines must occur exactly once in its file."""
    for section in re.split(r"^--- ", diff, flags=re.M)[1:]:
        header, *hunks = re.split(r"^@@.*\n", section, flags=re.M)
        path = root / re.search(r"^\+\+\+ b/(\S+)", header, re.M)[1]
        text = path.read_text()
        for hunk in hunks:
            lines = [line if line.strip() else " \n" for line in hunk.splitlines(keepends=True)]  # a blank: context
            old = "".join(line[1:] for line in lines if line[0] in " -")
            new = "".join(line[1:] for line in lines if line[0] in " +")
            assert text.count(old) == 1, f"the tutorial's edit of {path.relative_to(root)} no longer fits:\n{old}"
            text = text.replace(old, new)
        path.write_text(text)


def test_the_tutorial_commands_run_in_order_from_new_plugin_to_baselines(tmp_path):
    blocks = tutorial_blocks()
    assert [language for language, _ in blocks].count("bash") >= 4 and any(lang == "diff" for lang, _ in blocks)
    [name] = {m[1] for _, block in blocks for m in INSTALL.finditer(block)}
    env = {key: value for key, value in os.environ.items() if key != DISABLE_AUTOLOAD_ENV}
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", "PYTHON": sys.executable,
            "PYTHONPATH": f"{tmp_path / name / 'src'}{os.pathsep}{tmp_path / 'site'}", "OMP_NUM_THREADS": "1"}
    output = ""
    for number, (language, block) in enumerate(blocks):
        if language == "diff":
            apply_diff(block, tmp_path)
            continue
        script = "\n".join(shell_line(line) for line in block.splitlines())
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                             text=True)
        output += run.stdout
        assert run.returncode == 0, f"block {number} failed:\n{script}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    sample = next(line for _, block in blocks for line in block.splitlines() if line.startswith("armm sample "))
    prompt = (tmp_path / re.search(r"--prompt-file (\S+)", sample)[1]).read_text().strip()
    written = (tmp_path / re.search(r"--output (\S+)", sample)[1]).read_text().splitlines()
    assert written and all(line.startswith(prompt) for line in written), written
    assert re.search(r"bits per symbol\s*│\s*\d+\.\d+", output), output[-2000:]  # armm score's table
    rows = [line.split("|")[1:-1] for line in output.splitlines() if re.match(r"\| .*\| +\d+\.\d+ \|$", line)]
    predictors = [row[0].strip() for row in rows]  # armm baselines' table
    assert predictors[0].startswith("unigram") and predictors[-1].startswith("model runs/"), output[-2000:]
