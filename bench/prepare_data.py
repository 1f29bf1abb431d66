"""Data preparation throughput: ``TokenDataModule.prepare_data`` (what ``armm fit`` runs first) against the floor, a
plain loop that reads the same files and encodes them with the ``tokenizers`` backend's ``encode_batch``.

    python bench/prepare_data.py            # a ~1 GB corpus: tens of minutes on 2 cores
    python bench/prepare_data.py --mb 64    # a quick try

The corpus is English and Python from the standard library (pydoc_data.topics and ``*.py`` sources), cut into
sentences and lines and drawn into distinct paragraphs, laid out two ways: many ~1 MB files, and one file. A text-bpe
vocabulary fitted once on a small sample is used by both sides (``data.tokenizer_dir``). Each measurement runs in its
own process, so its peak resident memory (``VmHWM``) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import tables

FILE_BYTES = 1 << 20  # the many-files layout: ~1 MB each
BATCH_CHARS = (1 << 20) * max(2, len(os.sched_getaffinity(0)))  # per encode call, as armm.training.prepare


def sentences() -> list[str]:
    """Sentences of pydoc's topics and lines of the standard library's sources: the pieces paragraphs are drawn from."""
    from pydoc_data.topics import topics

    pieces = [s.strip() + "." for text in topics.values() for s in text.split(". ") if len(s.strip()) > 20]
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200]:
        pieces += [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return pieces


def write_corpus(root: Path, megabytes: int, seed: int = 0) -> tuple[Path, Path]:
    """``root/many/*.txt`` and ``root/one/corpus.txt``, the same ``megabytes`` of paragraphs."""
    rng = random.Random(seed)
    pool = sentences()
    (root / "many").mkdir(parents=True)
    (root / "one").mkdir()
    written, index = 0, 0
    with open(root / "one" / "corpus.txt", "w", encoding="utf-8") as whole:
        while written < megabytes * 1e6:
            paragraphs, size = [], 0
            while size < FILE_BYTES:
                paragraph = " ".join(rng.choices(pool, k=rng.randint(2, 8)))
                paragraphs.append(paragraph)
                size += len(paragraph) + 2
            text = "\n\n".join(paragraphs) + "\n"
            (root / "many" / f"{index:05}.txt").write_text(text, encoding="utf-8")
            whole.write(text)
            written += len(text.encode())
            index += 1
    return root / "many", root / "one"


def fit_vocabulary(root: Path, files: Path) -> Path:
    from armm_text import BPETokenizer

    tokenizer = BPETokenizer(vocab_size=8192)
    tokenizer.fit(path.read_text(encoding="utf-8") for path in sorted(files.glob("*.txt"))[:4])
    (root / "tokenizer").mkdir()
    tokenizer.save(root / "tokenizer")
    return root / "tokenizer"


# --- the two measured sides, each run in a child process -----------------------------------------------------------
def run_armm(data: Path, tokenizer: Path, cache: Path) -> None:
    from armm.training.data import TokenDataModule

    TokenDataModule(tokenizer="text-bpe", tokenizer_dir=tokenizer, path=str(data), seq_len=256,
                    cache_dir=cache).prepare_data()


def run_floor(data: Path, tokenizer: Path, cache: Path) -> None:
    """Read every file in ``BATCH_CHARS`` batches (a big file in 1M-character chunks) and encode, keeping nothing."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    batch, held = [], 0
    for path in sorted(data.glob("*.txt")):
        with open(path, encoding="utf-8", newline="") as handle:
            while chunk := handle.read(1 << 20):
                batch.append(chunk)
                held += len(chunk)
                if held >= BATCH_CHARS:
                    backend.encode_batch(batch, add_special_tokens=False)
                    batch, held = [], 0
    if batch:
        backend.encode_batch(batch, add_special_tokens=False)


def measure(side: str, data: Path, tokenizer: Path, cache: Path) -> dict[str, float]:
    """Run one side in a fresh process: its seconds and peak resident memory (MB)."""
    result = subprocess.run([sys.executable, __file__, "--child", side, str(data), str(tokenizer), str(cache)],
                            capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{side} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def child(side: str, data: str, tokenizer: str, cache: str) -> None:
    start = time.perf_counter()
    (run_armm if side == "armm" else run_floor)(Path(data), Path(tokenizer), Path(cache))
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    peak = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")),
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # kB
    print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024, help="corpus size in MB")
    parser.add_argument("--dir", type=Path, default=None, help="where the corpus goes (a temporary folder by default)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="armm-tokenize-", dir=args.dir))
    print(tables.cpu_summary())
    many, one = write_corpus(root, args.mb)
    tokenizer = fit_vocabulary(root, many)
    megabytes = sum(p.stat().st_size for p in many.glob("*.txt")) / 1e6
    rows = []
    for layout, data in (("many files", many), ("one file", one)):
        floor = measure("floor", data, tokenizer, root / "cache-floor")
        armm = measure("armm", data, tokenizer, root / f"cache-{layout.replace(' ', '-')}")
        for side, result in (("floor", floor), ("armm", armm)):
            rows.append([layout, side, f"{megabytes:,.0f}", f"{result['seconds']:.1f}",
                         f"{megabytes / result['seconds']:.2f}", f"{floor['seconds'] / result['seconds']:.2f}",
                         f"{result['peak_mb']:,.0f}"])
    tables.print_table(["layout", "side", "MB", "seconds", "MB/s", "× floor", "peak RSS MB"], rows)
    print(f"corpus and caches left in {root}; delete it when done")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
    else:
        main()
