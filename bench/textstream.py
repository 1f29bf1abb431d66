"""Per-token cost of ``TextStream.push`` for a ``text-bpe`` tokenizer: its ``DecodeStream`` path against decoding all
ids again at each token (what every tokenizer without a ``tokenizers`` backend still does).

    python bench/textstream.py
"""

from __future__ import annotations

import time

from pydoc_data.topics import topics

import armm
from armm.textstream import TextStream


class ReDecoding:
    """A tokenizer seen through ``decode`` alone, so that TextStream decodes all ids again at each token."""

    def __init__(self, tokenizer: armm.Tokenizer) -> None:
        self.decode = tokenizer.decode


def main() -> None:
    tokenizer = armm.get_plugins().tokenizers.get("text-bpe")(vocab_size=4096)
    texts = [topics[key] for key in sorted(topics)]
    tokenizer.fit(texts)
    ids = tokenizer.encode("".join(texts) + "日本語のテキスト 🤖 " * 200)
    for length in (1000, 4000, 16000):
        for name, seen_as in (("DecodeStream", tokenizer), ("decode all", ReDecoding(tokenizer))):
            stream = TextStream(seen_as, ["<|im_end|>", "<|eot_id|>"])
            start = time.perf_counter()
            for token in ids[:length]:
                stream.push(token)
            elapsed = time.perf_counter() - start
            print(f"{length:6d} tokens  {name:13s} {elapsed * 1e6 / length:8.1f} us/token")


if __name__ == "__main__":
    main()
