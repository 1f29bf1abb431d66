"""Checkpoint files that a crash cannot cut in half."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from armm.files import temporary_beside


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, flushes it to disk, then renames it over its name.

    A crash at any moment leaves the previous checkpoint or the new one, whole. (Lightning's default writes
    through a temporary file in the system temp folder and moves it: across file systems, such as a tmpfs
    ``/tmp``, that move is a copy that a kill can cut, and nothing is flushed to disk before the rename.)
    A kill may leave a ``.NAME.*.tmp`` file behind; it is never read.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_beside(path)  # readable as any new file, as Lightning's own checkpoints are
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
