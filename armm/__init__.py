"""armm: one causal Transformer core for any sequence of discrete tokens; domains arrive as plugins."""

from armm.checkpoint import load_model, load_tokenizer, save_model
from armm.config import PRESETS, ModelConfig
from armm.generation import generate
from armm.hookspecs import hookimpl
from armm.model import Transformer
from armm.plugins import get_plugins
from armm.prompts import prompt_ids
from armm.sampling import Sampler, build_sampler
from armm.scoring import Score, score
from armm.speculative import SpeculativeStats, speculative_generate
from armm.symbols import Symbol, SymbolTokenizer
from armm.tokenizer import ByteTokenizer, Tokenizer

__all__ = [
    "PRESETS",
    "ByteTokenizer",
    "ModelConfig",
    "Sampler",
    "Score",
    "SpeculativeStats",
    "Symbol",
    "SymbolTokenizer",
    "Tokenizer",
    "Transformer",
    "build_sampler",
    "generate",
    "get_plugins",
    "hookimpl",
    "load_model",
    "load_tokenizer",
    "prompt_ids",
    "save_model",
    "score",
    "speculative_generate",
]
__version__ = "0.1.0"
