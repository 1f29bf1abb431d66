"""Memory read bandwidth, for the bandwidth floor of ``bench/generate.py``: the faster of torch's ``sum()`` and a
C read loop with software prefetch (``read_bandwidth.c``, built here with the system C compiler when there is one).
"""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from armm.backends import library


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ReadProbe:
    """Times one read of a float32 tensor by every method there is; the fastest counts."""

    def __init__(self) -> None:
        self.lib = None
        compiler = library._compiler()
        if compiler is None:
            return
        with tempfile.TemporaryDirectory(prefix="armm-membw-") as folder:  # a loaded library outlives its file
            built = Path(folder) / "read_bandwidth.so"
            result = subprocess.run([compiler, *library.FLAGS, str(Path(__file__).with_name("read_bandwidth.c")),
                                     "-o", str(built)], capture_output=True, text=True)
            if result.returncode == 0:
                self.lib = ctypes.CDLL(str(built))
                self.lib.read_sum.restype = ctypes.c_float
                self.lib.read_sum.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]

    def seconds(self, data: torch.Tensor) -> dict[str, float]:
        """Seconds of one full read of ``data`` per method (the C loop reads CPU tensors only)."""
        reads = {"torch sum()": data.sum}
        if self.lib is not None and data.device.type == "cpu":
            reads["C read with prefetch"] = lambda: self.lib.read_sum(data.data_ptr(), data.numel(),
                                                                      torch.get_num_threads())
        times = {}
        for method, read in reads.items():
            sync(data.device)
            start = time.perf_counter()
            read()
            sync(data.device)
            times[method] = time.perf_counter() - start
        return times

    def fastest(self, data: torch.Tensor) -> float:
        """Seconds of one read of ``data`` by the fastest method."""
        return min(self.seconds(data).values())

    def peak(self, data: torch.Tensor, repeats: int = 5) -> float:
        """Read bandwidth in bytes/s: the best of ``repeats`` rounds of every method over ``data``."""
        return data.numel() * data.element_size() / min(self.fastest(data) for _ in range(repeats))
