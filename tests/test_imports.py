"""Text-only use does not pay for the heavy libraries that only some modality plugins need."""

import subprocess
import sys

HEAVY = ("torchaudio", "torchvision", "soundfile", "sklearn", "PIL", "lightning", "matplotlib")


def test_loading_every_plugin_imports_no_heavy_library():
    code = (
        "import sys, armm; plugins = armm.get_plugins(); "
        f"print(sorted(e.name for e in plugins.tokenizers)); print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names, heavy = result.stdout.splitlines()
    assert heavy == "[]"
    for name in ("bytes", "text-bpe", "code-bpe", "protein", "audio-mulaw", "image-pixels", "image-vq"):
        assert f"'{name}'" in names
