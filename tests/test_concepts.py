"""docs/concepts.md runs as written: its Python blocks, in order, in one session, on a model trained for a few
steps of the guide's own recipe (the guide's printed outputs come from the full recipe)."""

import re
from pathlib import Path

from armm.cli import main

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "concepts.md"


def test_the_concepts_guide_runs_on_a_freshly_trained_model(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    main(["fit", "-c", "recipes/text.yaml", "--trainer.max_steps", "20", "--trainer.val_check_interval", "10",
          "--trainer.limit_val_batches", "2", "--data.tokenizer_options", '{"vocab_size": 512}'])
    assert (tmp_path / "runs" / "text" / "export" / "best" / "model.safetensors").is_file()
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) >= 10
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)
