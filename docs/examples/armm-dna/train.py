"""Train a tiny armm model on synthetic DNA with the dna plugin, save it, and sample from it.

The data is a Markov chain with an obvious pattern: after each base comes the next one of the cycle
A → C → G → T → A with probability 0.9, else one of the other three bases. Its entropy is
0.435 nats per base; guessing uniformly costs log 4 = 1.386. Run: ``python train.py``, or
``python train.py --reads reads`` to write files of reads for ``armm fit -c dna.yaml``.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
import torch.nn.functional as F

import armm

NEXT = {"A": "C", "C": "G", "G": "T", "T": "A"}


def markov_dna(length: int, rng: random.Random, follow: float = 0.9) -> str:
    """A sequence that follows the cycle A → C → G → T with probability ``follow`` at every step."""
    bases = [rng.choice("ACGT")]
    while len(bases) < length:
        expected = NEXT[bases[-1]]
        bases.append(expected if rng.random() < follow else rng.choice([b for b in "ACGT" if b != expected]))
    return "".join(bases)


def train(model: armm.Transformer, tok: armm.Tokenizer, sequences: list[str], steps: int = 200,
          batch_size: int = 32, lr: float = 3e-3) -> list[float]:
    """Next-token training on ``bos + sequence + eos`` rows (equal lengths), a plain AdamW loop."""
    data = torch.tensor([[tok.bos_id, *tok.encode(s), tok.eos_id] for s in sequences])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        batch = data[torch.randint(len(data), (batch_size,))]
        logits = model(batch[:, :-1])  # (B, T, vocab_size)
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def write_reads(folder: str | Path, files: int = 8, reads: int = 250, length: int = 64, seed: int = 0) -> None:
    """``files`` text files of ``reads`` sequences of the chain, one per line: data for ``armm fit``."""
    folder, rng = Path(folder), random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        (folder / f"reads-{index}.txt").write_text("".join(markov_dna(length, rng) + "\n" for _ in range(reads)))


def main() -> None:
    torch.manual_seed(0)
    tok = armm.get_plugins().tokenizers.get("dna")()  # found through the entry point
    rng = random.Random(0)
    sequences = [markov_dna(64, rng) for _ in range(512)]
    model = armm.Transformer(armm.ModelConfig.from_name("gpt2-tiny", vocab_size=tok.vocab_size))
    losses = train(model, tok, sequences)
    print(f"loss: {losses[0]:.3f} -> {losses[-1]:.3f} nats per token")
    armm.save_model("runs/dna", model, tok)
    new = armm.generate(model, [[tok.bos_id]] * 4, max_new_tokens=70, sampler="temperature=1",
                        stop_tokens=[tok.eos_id], seed=[0, 1, 2, 3])
    for ids in new:
        print(tok.decode(ids))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", metavar="FOLDER", help="write files of reads there instead of training")
    folder = parser.parse_args().reads
    if folder:
        write_reads(folder)
    else:
        main()
