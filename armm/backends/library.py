"""The native decode step's library: ``csrc/decode_step.c``, built with the system's C compiler on first use.

The library is compiled once per source, compiler and CPU (``-O3 -march=native -fopenmp``) into
``$ARMM_CACHE_DIR`` (default ``~/.cache/armm``) and loaded with ``ctypes``. Where it cannot be built (no C
compiler, another OS) ``available()`` is False, a warning says why once, and decoding runs in PyTorch.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from functools import cache
from pathlib import Path

SOURCE = Path(__file__).parent / "csrc" / "decode_step.c"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
FLOAT_P = ctypes.POINTER(ctypes.c_float)
INT8_P = ctypes.POINTER(ctypes.c_int8)
MATRICES = ("qkv", "attn_proj", "fc", "mlp_proj")  # the four weight matrices of a layer, as the C struct names them


class LayerStruct(ctypes.Structure):
    """``Layer`` in decode_step.c: one layer's weights and KV-cache, as pointers."""

    _fields_ = [
        *[(name, FLOAT_P) for name in (
            "norm_1_weight", "norm_1_bias", "qkv_weight", "qkv_bias", "attn_proj_weight", "attn_proj_bias",
            "norm_2_weight", "norm_2_bias", "fc_weight", "fc_bias", "mlp_proj_weight", "mlp_proj_bias",
            "k_cache", "v_cache")],
        *[(f"{name}_q", INT8_P) for name in MATRICES],
        *[(f"{name}_scale", FLOAT_P) for name in MATRICES],
    ]


class ModelStruct(ctypes.Structure):
    """``Model`` in decode_step.c: sizes, the shared tensors and the layers."""

    _fields_ = [
        *[(name, ctypes.c_int32) for name in (
            "n_layer", "d_model", "n_head", "n_kv_head", "head_dim", "d_ff", "vocab_size", "cache_len",
            "max_seq_len", "rmsnorm", "swiglu", "num_streams")],
        ("norm_eps", ctypes.c_float),
        *[(name, FLOAT_P) for name in (
            "tok_emb", "pos_emb", "rope_cos", "rope_sin", "norm_f_weight", "norm_f_bias", "lm_head_weight")],
        ("lm_head_q", INT8_P),
        ("lm_head_scale", FLOAT_P),
        ("layers", ctypes.POINTER(LayerStruct)),
        ("rope_inv_freq", FLOAT_P),
    ]


def cache_dir() -> Path:
    return Path(os.environ.get("ARMM_CACHE_DIR") or Path.home() / ".cache" / "armm") / "native"


def cpu_id() -> str:
    """What ``-march=native`` compiles for: the CPU's model and flags (a library built for one CPU may not run on
    another that shares the cache folder)."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({line for line in info if line.startswith(("model name", "flags"))}))


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def library_path(compiler: str) -> Path:
    """Where the library built from this source, with this compiler, for this CPU is cached."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(FLAGS).encode(), version.encode(),
                                     cpu_id().encode()]))
    return cache_dir() / f"decode_step-{key.hexdigest()[:16]}.so"


@cache
def library() -> ctypes.CDLL | None:
    """The compiled library (building it if needed), or None with a warning saying why it cannot be."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        return _unavailable(f"the native decode step is built on Linux x86-64 and arm64 only (here: {sys.platform} "
                            f"{platform.machine()})")
    compiler = _compiler()
    if compiler is None:
        return _unavailable("no C compiler (cc, gcc or clang) was found; install one (e.g. apt install gcc)")
    path = library_path(compiler)
    if path.exists():
        try:
            return _bind(ctypes.CDLL(str(path)))
        except OSError:  # a damaged file in the cache: build it again
            path.unlink(missing_ok=True)
    error = _build(compiler, path)
    return _unavailable(error) if error else _bind(ctypes.CDLL(str(path)))


def _build(compiler: str, path: Path) -> str | None:
    """Compile the source to ``path`` (atomically: a crash or a concurrent build never leaves half a library);
    returns the error, if any."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            built = Path(tmp) / path.name
            result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                return f"{compiler} could not build {SOURCE.name}: {result.stderr.strip()[-500:]}"
            os.replace(built, path)
    except OSError as error:
        return f"cannot write the native library to {path.parent} ({error}); set ARMM_CACHE_DIR to a writable folder"
    return None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.armm_forward.restype = ctypes.c_int
    lib.armm_forward.argtypes = [
        ctypes.POINTER(ModelStruct), ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
    ]
    lib.armm_work_size.restype = ctypes.c_int64
    lib.armm_work_size.argtypes = [ctypes.POINTER(ModelStruct), ctypes.c_int]
    return lib


def _unavailable(reason: str) -> None:
    warnings.warn(f"armm decodes in PyTorch: {reason}", RuntimeWarning, stacklevel=3)
    return None


def available() -> bool:
    return library() is not None
