"""armm's native CPU decode step: ``csrc/decode_step.c``, built with the system's C compiler on first use.

A batch-1 decode step on the CPU is bound by how fast it reads the weights, and in PyTorch it also pays the
dispatch of ~150 operator calls. The native step does the whole of a short forward (``takes``: decode steps,
speculative checks, short prefills; embeddings to logits) in one call inside one OpenMP region, reading the model's
own float32 weights in place (no copy, no extra memory), or the linear layers' weight-only int8 copies.

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

import torch
from torch import Tensor

SOURCE = Path(__file__).parent / "csrc" / "decode_step.c"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_float_p = ctypes.POINTER(ctypes.c_float)
_int8_p = ctypes.POINTER(ctypes.c_int8)
MATRICES = ("qkv", "attn_proj", "fc", "mlp_proj")  # the four weight matrices of a layer, as the C struct names them


class _Layer(ctypes.Structure):
    _fields_ = [
        *[(name, _float_p) for name in (
            "norm_1_weight", "norm_1_bias", "qkv_weight", "qkv_bias", "attn_proj_weight", "attn_proj_bias",
            "norm_2_weight", "norm_2_bias", "fc_weight", "fc_bias", "mlp_proj_weight", "mlp_proj_bias",
            "k_cache", "v_cache")],
        *[(f"{name}_q", _int8_p) for name in MATRICES],
        *[(f"{name}_scale", _float_p) for name in MATRICES],
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        *[(name, ctypes.c_int32) for name in (
            "n_layer", "d_model", "n_head", "n_kv_head", "head_dim", "d_ff", "vocab_size", "cache_len",
            "max_seq_len", "rmsnorm", "swiglu")],
        ("norm_eps", ctypes.c_float),
        *[(name, _float_p) for name in (
            "tok_emb", "pos_emb", "rope_cos", "rope_sin", "norm_f_weight", "norm_f_bias", "lm_head_weight")],
        ("lm_head_q", _int8_p),
        ("lm_head_scale", _float_p),
        ("layers", ctypes.POINTER(_Layer)),
    ]


def cache_dir() -> Path:
    return Path(os.environ.get("ARMM_CACHE_DIR") or Path.home() / ".cache" / "armm") / "native"


def _cpu_id() -> str:
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
                                     _cpu_id().encode()]))
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
        ctypes.POINTER(_Model), ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
    ]
    lib.armm_work_size.restype = ctypes.c_int64
    lib.armm_work_size.argtypes = [ctypes.POINTER(_Model), ctypes.c_int]
    return lib


def _unavailable(reason: str) -> None:
    warnings.warn(f"armm decodes in PyTorch: {reason}", RuntimeWarning, stacklevel=3)
    return None


def available() -> bool:
    return library() is not None


def _ptr(tensor: Tensor | None):
    if tensor is None:
        return None
    return ctypes.cast(tensor.data_ptr(), _int8_p if tensor.dtype == torch.int8 else _float_p)


def _int8_copy(linear: torch.nn.Module) -> tuple[Tensor, Tensor]:
    """A linear layer's prepared int8 weight ``[out, in]`` and its scales as float32 ``[out]``."""
    if linear.prepared is None or linear.prepared[0] != "int8":
        raise RuntimeError("prepare the linear layers for int8 (Linear.prepare) before an int8 native step")
    quantized, scales = linear.prepared[2]
    return quantized, scales.float().contiguous()


MAX_TOKENS = 8  # tokens per row the native forward always takes (decode steps, speculative checks)
MAX_ROWS = 32  # and longer forwards of at most this many tokens in all (short prefills); larger ones run in PyTorch


def takes(batch_size: int, tokens: int) -> bool:
    """Whether a forward of ``tokens`` per row goes native. The step streams each weight once against every row,
    which beats PyTorch's matrix products up to about 32-64 rows (gpt2 config: a 16-token prefill takes 5.9 ms
    native, 9.9 ms in PyTorch; 64 rows take about the same in both; docs/performance.md)."""
    return tokens <= MAX_TOKENS or batch_size * tokens <= MAX_ROWS


class NativeDecoder:
    """The native forward bound to one model's weights and KV-cache (built by ``Transformer.setup_cache``): decode
    steps, and short multi-token forwards (speculative checks, short prefills; see ``takes``).

    It keeps references to every tensor it points at, so none is freed under it; a weight replaced by another
    tensor after ``setup_cache`` is not seen until the next one (changes in place, e.g. an optimizer step, are).
    """

    def __init__(self, model: torch.nn.Module, lib: ctypes.CDLL, int8: bool = False) -> None:
        """``int8``: read the linear layers' weight-only int8 copies (``Linear.prepare("int8")`` must have run)
        instead of their float32 weights."""
        c = model.config
        blocks = model.blocks
        self.lib = lib
        self.tensors: list[Tensor] = []  # everything the C structs point at

        def ptr(tensor: Tensor | None):
            if tensor is not None:
                self.tensors.append(tensor)
            return _ptr(tensor)

        layers = (_Layer * len(blocks))()
        for layer, block in zip(layers, blocks):
            attn, mlp = block.attn, block.mlp
            for field, tensor in (
                ("norm_1_weight", block.norm_1.weight), ("norm_1_bias", getattr(block.norm_1, "bias", None)),
                ("qkv_weight", attn.qkv.weight), ("qkv_bias", attn.qkv.bias),
                ("attn_proj_weight", attn.proj.weight), ("attn_proj_bias", attn.proj.bias),
                ("norm_2_weight", block.norm_2.weight), ("norm_2_bias", getattr(block.norm_2, "bias", None)),
                ("fc_weight", mlp.fc.weight), ("fc_bias", mlp.fc.bias),
                ("mlp_proj_weight", mlp.proj.weight), ("mlp_proj_bias", mlp.proj.bias),
                ("k_cache", attn.kv_cache.k), ("v_cache", attn.kv_cache.v),
            ):
                setattr(layer, field, ptr(tensor))
            if int8:
                for name, linear in zip(MATRICES, (attn.qkv, attn.proj, mlp.fc, mlp.proj)):
                    quantized, scale = _int8_copy(linear)
                    setattr(layer, f"{name}_q", ptr(quantized))
                    setattr(layer, f"{name}_scale", ptr(scale))
        cache = blocks[0].attn.kv_cache
        rope = c.position == "rope"
        self.model = _Model(
            n_layer=c.n_layer, d_model=c.d_model, n_head=c.n_head, n_kv_head=c.n_kv_head, head_dim=c.head_dim,
            d_ff=c.d_ff, vocab_size=c.vocab_size, cache_len=cache.max_len, max_seq_len=c.max_seq_len,
            rmsnorm=c.norm == "rmsnorm", swiglu=c.mlp == "swiglu", norm_eps=c.norm_eps,
            tok_emb=ptr(model.tok_emb.weight), pos_emb=ptr(model.pos_emb.weight if model.pos_emb is not None else None),
            rope_cos=ptr(model.rope_cos if rope else None), rope_sin=ptr(model.rope_sin if rope else None),
            norm_f_weight=ptr(model.norm_f.weight), norm_f_bias=ptr(getattr(model.norm_f, "bias", None)),
            lm_head_weight=ptr(model.lm_head.weight), layers=layers,
        )
        if int8:
            quantized, scale = _int8_copy(model.lm_head)
            self.model.lm_head_q, self.model.lm_head_scale = ptr(quantized), ptr(scale)
        self.layers, self.cache, self.config = layers, cache, c
        self.work_per_token = lib.armm_work_size(ctypes.byref(self.model), 1)  # scratch floats; it is linear in tokens
        self.work = torch.empty(0)

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        """Whether every tensor the step reads is a contiguous float32 CPU tensor (else: decode in PyTorch)."""
        tensors = [*model.parameters(), *model.buffers()]
        return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)

    def __call__(self, idx: Tensor, start: int, pad: Tensor | None, logits_to_keep: int = 0) -> Tensor:
        """Logits ``[B, T, V]`` (the last ``logits_to_keep`` of them, if not 0) for ``idx [B, T]`` at cache slots
        ``start .. start+T-1``, any ``T``; ``Transformer.forward`` sends what ``takes(B, T)`` allows."""
        B, T = idx.shape
        self.cache.check_write(B, start, T)
        idx = idx if idx.dtype == torch.int64 and idx.stride(-1) == 1 else idx.long().contiguous()
        if pad is not None and (pad.dtype != torch.int64 or not pad.is_contiguous()):
            pad = pad.long().contiguous()
        keep = min(logits_to_keep, T) or T
        if self.work.numel() < B * T * self.work_per_token:
            self.work = torch.empty(B * T * self.work_per_token)
        logits = torch.empty(B, keep, self.config.vocab_size)
        bad = self.lib.armm_forward(
            ctypes.byref(self.model), idx.data_ptr(), idx.stride(0), B, T, start,
            None if pad is None else pad.data_ptr(), keep, self.work.data_ptr(), logits.data_ptr(),
            torch.get_num_threads(),
        )
        if bad == 1:
            raise IndexError(f"token id outside the vocabulary (0 .. {self.config.vocab_size - 1}) in "
                             f"{idx.flatten().tolist()}")
        if bad == 2:
            raise self.config.too_long(start + T)
        return logits
