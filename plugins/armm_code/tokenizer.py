"""Byte-level BPE for source code: indentation-aware pre-tokenization and fill-in-the-middle special tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from armm.files import with_gzip
from armm_code.fim import FIMTransform, check_rates
from armm_text import BPETokenizer
from tokenizers import Regex, pre_tokenizers

FIM_TOKENS = {"fim_prefix": "<|fim_prefix|>", "fim_middle": "<|fim_middle|>", "fim_suffix": "<|fim_suffix|>"}

# GPT-2's byte-level split plus one rule: blank lines, a line break and the next line's indentation form one
# piece, so whole indentation levels ("\n        ") become single tokens and the keyword after them keeps no
# leading space. GPT-2's split already keeps most of the run together, so the gain is small (see README).
CODE_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|(?:[ \t]*\r?\n)+[ \t]*|\s+(?!\S)|\s+"""


class CodeTokenizer(BPETokenizer):
    """``text-bpe`` for source files: lossless on any text (tabs, trailing spaces, CRLF kept), with
    ``fim_prefix``/``fim_middle``/``fim_suffix`` special tokens for ``armm_code.FIMTransform``, which training
    documents go through at ``fim_rate`` (see ``encode_document``)."""

    name = "code-bpe"
    modality = "code"
    file_suffix = ".py"
    read_suffixes = with_gzip((".py",))

    def __init__(
        self,
        vocab_size: int = 8192,
        *,
        suffixes: Sequence[str] = (".py",),
        extra_special_tokens: Mapping[str, str] | None = None,
        fim_rate: float = 0.0,
        fim_spm_rate: float = 0.5,
        fim_seed: int = 0,
        **roles: str | None,
    ) -> None:
        """``suffixes``: the source files ``read`` takes; ``write`` uses the first. ``roles``: bos=, eos=, pad=
        as for ``text-bpe``; the FIM tokens can be renamed through ``extra_special_tokens``. ``fim_rate``,
        ``fim_spm_rate`` and ``fim_seed`` set the fill-in-the-middle transform of training documents."""
        super().__init__(vocab_size, extra_special_tokens={**FIM_TOKENS, **(extra_special_tokens or {})}, **roles)
        if isinstance(suffixes, str) or not suffixes or not all(s.startswith(".") and len(s) > 1 for s in suffixes):
            raise ValueError(f"suffixes must be a non-empty list like ['.py', '.pyi'], got {suffixes!r}")
        check_rates(fim_rate, fim_spm_rate, prefix="fim_")
        self.read_suffixes = with_gzip(suffixes)
        self.file_suffix = suffixes[0]
        self.fim_rate, self.fim_spm_rate, self.fim_seed = fim_rate, fim_spm_rate, fim_seed
        self._fim: FIMTransform | None = None  # made at the first FIM document, once the vocabulary exists

    def options(self) -> dict[str, Any]:
        fim = {"fim_rate": self.fim_rate, "fim_spm_rate": self.fim_spm_rate, "fim_seed": self.fim_seed}
        suffixes = [s for s in self.read_suffixes if not s.endswith(".gz")]
        return {**super().options(), "suffixes": suffixes, **fim}

    def encode_document(self, sample: str) -> list[int]:
        """bos, then the document left to right, or with probability ``fim_rate`` as a FIM sequence (PSM or SPM,
        see ``FIMTransform``); eos last. The draws come from one generator seeded with ``fim_seed``, so the n-th
        document this tokenizer encodes always gets the same transform."""
        if self.fim_rate == 0:
            return super().encode_document(sample)
        if self._fim is None:
            self._fim = FIMTransform(self, self.fim_rate, self.fim_spm_rate, self.fim_seed)
        return ([self.bos_id] if self.bos_id is not None else []) + self._fim(sample)

    def encode_documents(self, samples: Sequence[str]) -> list[list[int]]:
        """The batched encoding of ``text-bpe``; one document at a time through ``encode_document`` when
        fill-in-the-middle is on (its draws go document by document)."""
        if self.fim_rate == 0:
            return super().encode_documents(samples)
        return [self.encode_document(sample) for sample in samples]

    def pre_tokenizer(self) -> pre_tokenizers.PreTokenizer:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(CODE_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
