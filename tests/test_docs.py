"""The Python examples in README.md run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    assert (tmp_path / "runs" / "hello" / "model.safetensors").is_file()


def test_mixed_modality_guide_runs(tmp_path, monkeypatch):
    """docs/mixed.md's Python blocks run in order in one namespace, as a reader would paste them."""
    monkeypatch.chdir(tmp_path)
    guide = README.parent / "docs" / "mixed.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(guide), "exec"), namespace)
