"""Data for training: read through the modality plugin, tokenise once into a memory-mapped cache, serve windows.

Two layouts:

- ``packed`` (text, code, protein): every document becomes ``bos … eos`` and all of them are concatenated
  into one token stream; training draws windows of ``seq_len + 1`` tokens from it.
- ``samples`` (images, audio clips): every document is one row of exactly ``seq_len + 1`` tokens,
  right-padded with the pad id, whose targets are ignored.

With ``format: chat`` the documents are conversations, packed like text with a flag per token
(``train_scored.npy`` / ``val_scored.npy``) that keeps the loss on the assistant replies (``armm.training.chat_data``).

The cache (``cache_dir/<key>/``) holds ``train.npy`` / ``val.npy`` (and ``test.npy``; memory-mapped), ``meta.json``
(the split and each split's sizes) and the fitted tokenizer, keyed by the tokenizer, its options and the data; a
second run skips tokenisation. Documents are read, encoded and written a batch at a time
(``armm.training.prepare``), so the corpus never has to fit in memory.
"""

from __future__ import annotations

import glob
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Sampler

from armm.layout import VocabLayout
from armm.plugins import get_plugins
from armm.pretrained import load_pretrained_tokenizer
from armm.tokenizer import Tokenizer, build_tokenizer
from armm.training.augment import ConditionDropout, TrainingItems, augmentation
from armm.training.chat_data import (
    Messages, chat_template_for, conversations_of, pack_conversations, read_conversations, rendered_texts,
)
from armm.training.prepare import Source, document_split, ids_dtype, prepare_splits

IGNORE_INDEX = -100
CACHE_FORMAT = 3  # part of the cache key: a new format never reads an old cache
Layout = Literal["packed", "samples"]
DataFormat = Literal["documents", "chat"]


class PackedWindows(Dataset):
    """Windows of a token stream: item ``i`` is the stream at ``i * stride`` .. ``+ seq_len + 1``.

    With ``scored`` (a flag per token, e.g. the assistant replies of chat data) a target whose flag is off is
    ignored, and the windows holding no scored target are left out (their loss would be 0 / 0): item ``i`` is then
    the ``i``-th window that holds one, listed once in memory (fine-tuning data is small).
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, stride: int, scored: np.ndarray | None = None) -> None:
        self.tokens, self.seq_len, self.stride, self.scored = tokens, seq_len, stride, scored
        self.count = max(0, (len(tokens) - seq_len - 1) // stride + 1)
        self.starts = None
        if scored is not None:
            starts = np.arange(self.count, dtype=np.int64) * stride
            counts = np.concatenate([[0], np.cumsum(scored, dtype=np.int64)])  # counts[j]: scored among the first j
            self.starts = starts[counts[starts + seq_len + 1] > counts[starts + 1]]

    def __len__(self) -> int:
        return self.count if self.starts is None else len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.item(i, self.row(i))

    def start(self, i: int) -> int:
        """Where window ``i`` starts in the stream."""
        return i * self.stride if self.starts is None else int(self.starts[i])

    def row(self, i: int) -> np.ndarray:
        """Window ``i``'s ``seq_len + 1`` ids (a read-only view of the stream)."""
        return self.tokens[self.start(i):self.start(i) + self.seq_len + 1]

    def item(self, i: int, row: np.ndarray) -> dict[str, torch.Tensor]:
        """Inputs and targets of ``row``, window ``i``'s ids or a transform of them (its scored flags stay ``i``'s)."""
        window = torch.from_numpy(row.astype(np.int64))
        if self.scored is None:
            return {"input_ids": window[:-1], "targets": window[1:]}
        start = self.start(i)
        keep = torch.from_numpy(self.scored[start + 1:start + self.seq_len + 1].astype(bool))
        return {"input_ids": window[:-1], "targets": window[1:].masked_fill(~keep, IGNORE_INDEX)}


class PaddedSamples(Dataset):
    """Rows of ``seq_len + streams`` tokens; positions whose target is the pad id are ignored by the loss. With K
    ``streams`` (``Tokenizer.num_streams``) a model position reads K ids and predicts the K of the next one, so the
    targets are the ids K places on."""

    def __init__(self, rows: np.ndarray, pad_id: int, streams: int = 1) -> None:
        self.rows, self.pad_id, self.streams = rows, pad_id, streams

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.item(i, self.row(i))

    def row(self, i: int) -> np.ndarray:
        """Sample ``i``'s ``seq_len + streams`` ids, padding included (a read-only view of the cache)."""
        return self.rows[i]

    def item(self, i: int, row: np.ndarray) -> dict[str, torch.Tensor]:
        """Inputs and targets of ``row``, sample ``i``'s ids or a transform of them."""
        row, K = torch.from_numpy(row.astype(np.int64)), self.streams
        targets = row[K:].masked_fill(row[K:] == self.pad_id, IGNORE_INDEX)
        return {"input_ids": row[:-K].masked_fill(row[:-K] == self.pad_id, 0), "targets": targets}


class ResumableSampler(Sampler[int]):
    """Endless shuffled passes over ``size`` items, reproducible from ``seed``, starting after ``start`` items.

    A resumed run passes ``start`` = items this rank already consumed, so it continues the exact order of an
    uninterrupted run. Rank ``r`` of ``world`` takes items ``r, r + world, …`` of the shared order.
    With ``keyed=True`` it yields ``pass * size + index`` instead of ``index``, for datasets that vary per pass.
    """

    def __init__(self, size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1, keyed: bool = False) -> None:
        self.size, self.seed, self.start, self.rank, self.world = size, seed, start, rank, world
        self.keyed = keyed

    def __iter__(self) -> Iterator[int]:
        position = self.start * self.world + self.rank
        epoch, order = -1, None
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            yield int(order[position % self.size]) + (epoch * self.size if self.keyed else 0)
            position += self.world


class TokenDataModule(L.LightningDataModule):
    """Reads a dataset through a tokenizer plugin, tokenises it once into a cache, and serves training windows.

    Args:
        tokenizer: A registered tokenizer name (see ``armm plugins``); ``bytes`` when unset. With ``pretrained``,
            unset or the name of the pretrained folder's tokenizer.
        tokenizer_options: Keyword arguments for the tokenizer (e.g. ``vocab_size`` of a BPE, image ``size``).
        tokenizer_dir: A saved tokenizer folder to use instead of fitting one (for trainable tokenizers).
        pretrained: Tokenise with the tokenizer of this pretrained folder (an armm model directory or a Hugging Face
            folder; what ``model.init_from`` names, linked by ``armm fit``): ``tokenizer_options`` are not used.
        dataset: A registered built-in dataset (no download), used when ``path`` is not given.
        path: A file, folder or glob of raw data, read by the tokenizer plugin.
        layout: ``packed`` token stream (text-like) or fixed-length ``samples`` (images, audio clips).
        seq_len: Tokens per training window (the model's context must be at least this).
        batch_size: Windows per batch (per device).
        val_fraction: Share of documents held out for validation, drawn by ``seed``. With one document (a single
            text file) and the ``packed`` layout, the last ``val_fraction`` of its tokens are validation (nanoGPT's
            split), and a trainable tokenizer is fitted on the whole of it.
        val_path: A file, folder or glob of held-out validation data (read like ``path``): no split is drawn.
        test_path: A file, folder or glob of test data (read like ``path``), for ``armm test``.
        fields: For a manifest ``path`` (JSONL or CSV), which column holds each role (``{"text": "body"}``).
        prepare_workers: Processes that read and encode files while the cache is prepared; unset: one per core
            for tokenizers without their own batch encoder (images, audio), none otherwise (text-bpe's encoder is
            multi-threaded already).
        cache_dir: Where tokenised data is cached.
        num_workers: DataLoader worker processes.
        seed: Seed of the split and of the window order.
        condition_dropout: Probability of replacing a training sample's condition by the null token, for
            classifier-free guidance (mixed layouts with ``layout: samples``).
        condition: The layout part that conditions (e.g. ``text`` for a caption before an image).
        format: ``documents`` (samples of the tokenizer's modality) or ``chat``: conversations (a ``.jsonl`` path of
            ``{"messages": […]}`` lines, or a built-in chat dataset) rendered with a chat template, the loss on the
            assistant replies only (see ``armm.training.chat_data``).
        chat_template: For ``format: chat``, a built-in template name or a template file; by default the pretrained
            model's own template, else ChatML.
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        tokenizer_options: dict[str, Any] | None = None,
        tokenizer_dir: Path | None = None,
        pretrained: Path | None = None,
        dataset: str | None = None,
        path: str | None = None,
        layout: Layout = "packed",
        seq_len: int = 256,
        batch_size: int = 16,
        val_fraction: float = 0.05,
        cache_dir: Path = Path("runs/cache"),
        num_workers: int = 0,
        seed: int = 0,
        condition_dropout: float = 0.0,
        condition: str | None = None,
        format: DataFormat = "documents",
        chat_template: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        fields: dict[str, str] | None = None,
        prepare_workers: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= condition_dropout < 1:
            raise ValueError(f"data.condition_dropout must be in [0, 1), got {condition_dropout}")
        if condition_dropout and (condition is None or layout != "samples"):
            raise ValueError("data.condition_dropout needs data.condition (the layout part that conditions, e.g. "
                             "text) and data.layout: samples")
        if (dataset is None) == (path is None):
            raise ValueError("give exactly one of data.dataset (a built-in dataset, see `armm plugins`) or data.path")
        if layout not in ("packed", "samples"):
            raise ValueError(f"data.layout must be 'packed' or 'samples', got {layout!r}")
        if format not in ("documents", "chat"):
            raise ValueError(f"data.format must be 'documents' or 'chat', got {format!r}")
        if format == "chat" and layout != "packed":
            raise ValueError("data.format: chat packs conversations into one token stream; set data.layout: packed")
        if chat_template is not None and format != "chat":
            raise ValueError("data.chat_template renders conversations; set data.format: chat to train on them")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"data.seq_len and data.batch_size must be >= 1, got {seq_len} and {batch_size}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if pretrained is not None:
            tokenizer = _pretrained_tokenizer_name(pretrained, tokenizer, tokenizer_dir)
        tokenizer = tokenizer or "bytes"
        plugins = get_plugins()
        self.tokenizer_class = plugins.tokenizers.get(tokenizer)
        self.tokenizer_options = dict(tokenizer_options or {})
        if dataset is not None:
            plugins.datasets.get(dataset)  # unknown names fail now, naming the available ones
        for option, value in (("path", path), ("val_path", val_path), ("test_path", test_path)):
            if value is not None and not Path(value).exists() and not any(ch in str(value) for ch in "*?["):
                raise FileNotFoundError(f"data.{option} {value} does not exist (give a file, a folder or a glob)")
        if format == "chat" and (val_path or test_path or fields):
            raise ValueError("data.format: chat reads data.path (or a dataset) and draws its own validation split; "
                             "drop data.val_path, data.test_path and data.fields")
        if prepare_workers is not None and prepare_workers < 0:
            raise ValueError(f"data.prepare_workers must be >= 0 (0: none) or unset, got {prepare_workers}")
        self.tokenizer_name, self.tokenizer_dir, self.dataset, self.path = tokenizer, tokenizer_dir, dataset, path
        self.pretrained = pretrained
        self.layout, self.seq_len, self.batch_size = layout, seq_len, batch_size
        self.val_fraction, self.cache_dir, self.num_workers, self.seed = val_fraction, Path(cache_dir), num_workers, seed
        self.condition_dropout, self.condition = condition_dropout, condition
        self.format = format
        self.val_path, self.test_path, self.fields, self.prepare_workers = val_path, test_path, fields, prepare_workers
        self.template = chat_template_for(chat_template, pretrained) if format == "chat" else None
        self.tokenizer: Tokenizer | None = None
        self.meta: dict[str, Any] = {}
        self.scored: dict[str, np.ndarray | None] = {"train": None, "val": None, "test": None}  # chat: scored flags
        self.test_tokens: np.ndarray | None = None

    # --- preparing the cache -------------------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        """``cache_dir/<key>``: the key covers the tokenizer, its options, the data and the split."""
        source = self.dataset if self.dataset is not None else _describe_files(self.path)
        chat = [self.template.name, self.template.source, self.template.variables] if self.template else []
        pretrained = [_describe_files(str(self.pretrained))] if self.pretrained is not None else []  # its tokenizer
        held_out = [_describe_files(p) if p is not None else None for p in (self.val_path, self.test_path)]
        key = json.dumps([CACHE_FORMAT, self.tokenizer_name, self.tokenizer_options, str(self.tokenizer_dir), source, self.layout,
                          self.seq_len if self.layout == "samples" else None, self.val_fraction, self.seed, *chat,
                          *pretrained, *held_out, self.fields],
                         sort_keys=True, default=str)
        return self.cache_dir / f"{self.tokenizer_name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def prepare_data(self) -> None:
        """Read, split, fit the tokenizer if it learns one, tokenise, and write the cache (once, on one process)."""
        cache = self.cache_path
        if (cache / "meta.json").is_file():
            return
        tokenizer = self._make_tokenizer()
        tmp = cache.with_name(cache.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # what an interrupted run left
        (tmp / "tokenizer").mkdir(parents=True)
        try:
            splits = (self._prepare_chat(tmp, tokenizer) if self.template is not None
                      else self._prepare_documents(tmp, tokenizer))  # fmt: skip
            tokenizer.save(tmp / "tokenizer")
            dtype = ids_dtype(tokenizer.vocab_size)
            meta = {"tokenizer": self.tokenizer_name, "vocab_size": tokenizer.vocab_size, "dtype": dtype.name, **splits}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            tmp.replace(cache)
        except BaseException:  # an error or Ctrl-C leaves no half-written cache behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _prepare_documents(self, directory: Path, tokenizer: Tokenizer) -> dict[str, Any]:
        """Stream the documents through ``armm.training.prepare``: the split record and each split's sizes."""
        if self.dataset is not None:
            data = Source.of_samples(self.dataset, self._read_samples(tokenizer))
        else:
            data = Source.of_path(tokenizer, self.path, self.fields)
        val, test = (Source.of_path(tokenizer, p, self.fields) if p is not None else None
                     for p in (self.val_path, self.test_path))
        return prepare_splits(tokenizer, data, directory, layout=self.layout, seq_len=self.seq_len,
                              val_fraction=self.val_fraction, seed=self.seed, val=val, test=test,
                              workers=self.prepare_workers)

    def _prepare_chat(self, directory: Path, tokenizer: Tokenizer) -> dict[str, Any]:
        """Conversations, held in memory (fine-tuning data is small): split, fit, pack with their scored flags."""
        train, val = self._split(self._read_samples(tokenizer))
        if tokenizer.needs_fit:
            tokenizer.fit(rendered_texts(train, self.template))
        dtype = ids_dtype(tokenizer.vocab_size)
        return {split: self._save_chat(directory, split, docs, tokenizer, dtype) for split, docs in (("train", train), ("val", val))}

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        cache = self.cache_path
        if not (cache / "meta.json").is_file():
            self.prepare_data()
        self.meta = json.loads((cache / "meta.json").read_text())
        self.tokenizer = self.tokenizer_class.load(cache / "tokenizer")
        if self.condition_dropout:
            if not isinstance(self.tokenizer, VocabLayout):
                raise ValueError(f"data.condition_dropout needs a mixed layout tokenizer (tokenizer: mixed), "
                                 f"got {self.tokenizer.name!r}")
            self.tokenizer.span(self.condition)  # an unknown part fails now, naming the parts
        self.train_tokens = np.load(cache / "train.npy", mmap_mode="r")
        self.val_tokens = np.load(cache / "val.npy", mmap_mode="r")
        if (cache / "test.npy").is_file():
            self.test_tokens = np.load(cache / "test.npy", mmap_mode="r")
        self.scored = {split: np.load(cache / f"{split}_scored.npy", mmap_mode="r") if self.template else None
                       for split in ("train", "val")}
        self.scored["test"] = None  # chat data has no test split
        arrays = {"train": self.train_tokens, "val": self.val_tokens, "test": self.test_tokens}
        for split, array in arrays.items():
            if array is not None:
                sizes = self.meta[split]
                rank_zero_info(f"data {split}: {sizes['documents']:,} documents, {sizes['tokens']:,} tokens, "
                               f"{array.nbytes / 1e6:,.1f} MB")
        for split, array in arrays.items():
            if array is None:
                continue
            if len(self._dataset(array, stride=self.seq_len, split=split)) == 0:
                scored = " with a scored (assistant) token" if self.template else ""
                raise ValueError(
                    f"the {split} split has {array.size} tokens, too few for one window{scored} of "
                    f"data.seq_len={self.seq_len} + 1; add data, lower data.seq_len or change data.val_fraction"
                )

    @property
    def units_per_token(self) -> float:
        """Modality units (bytes, residues, pixel values, audio samples) per scored validation token."""
        return self.split_units_per_token("val")

    def split_units_per_token(self, split: str) -> float:
        """Modality units per scored token of ``split`` (``val`` or ``test``)."""
        return self.meta[split]["units"] / self.meta[split]["scored_tokens"]

    # --- loaders ---------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.train_tokens, stride=1 if self.layout == "packed" else self.seq_len, split="train")
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        consumed = trainer.global_step * trainer.accumulate_grad_batches * self.batch_size if trainer is not None else 0
        dropout = ConditionDropout(self.tokenizer, self.condition, self.condition_dropout) if self.condition_dropout else None
        augment = augmentation(self.tokenizer)
        keyed = dropout is not None or augment is not None  # items drawn anew each pass, keyed for exact resumes
        if keyed:
            dataset = TrainingItems(dataset, self.seed, dropout, augment)
        sampler = ResumableSampler(len(dataset), self.seed, start=consumed, rank=rank, world=world, keyed=keyed)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          drop_last=True)

    def val_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.val_tokens, stride=self.seq_len, split="val")  # disjoint windows cover the split once
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        if self.test_tokens is None:
            raise ValueError("there is no test split: set data.test_path to the test data to evaluate on")
        dataset = self._dataset(self.test_tokens, stride=self.seq_len, split="test")
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers)

    # --- helpers ---------------------------------------------------------------------------------------
    def _make_tokenizer(self) -> Tokenizer:
        if self.pretrained is not None:
            return load_pretrained_tokenizer(self.pretrained)
        if self.tokenizer_dir is not None:
            return self.tokenizer_class.load(self.tokenizer_dir)
        return build_tokenizer(self.tokenizer_class, self.tokenizer_options)

    def _read_samples(self, tokenizer: Tokenizer) -> list[Any]:
        if self.dataset is not None:
            samples = get_plugins().datasets.get(self.dataset)(tokenizer)
            if self.template is not None:
                samples = conversations_of(samples, f"dataset {self.dataset}")
        else:
            samples = read_conversations(self.path)  # chat: documents from files are streamed instead
        if not samples:
            raise ValueError(f"the dataset {self.dataset or self.path} is empty: it holds no samples")
        if self.template is None and isinstance(samples[0], dict) and "messages" in samples[0]:
            raise ValueError(f"the dataset {self.dataset} holds conversations; set data.format: chat to train on them")
        return samples

    def _split(self, conversations: list[Any]) -> tuple[list[Any], list[Any]]:
        """Hold out ``val_fraction`` of the conversations (at least one), chosen by the seed."""
        if len(conversations) < 2:
            raise ValueError(f"the dataset {self.dataset or self.path} holds 1 sample; a validation split needs at "
                             "least 2 (add conversations)")
        train, val = document_split(len(conversations), self.val_fraction, self.seed)
        return [conversations[i] for i in train.tolist()], [conversations[i] for i in val.tolist()]

    def _dataset(self, array: np.ndarray, stride: int, split: str) -> Dataset:
        if self.layout == "packed":
            return PackedWindows(array, self.seq_len, stride, self.scored[split])
        return PaddedSamples(array, self.tokenizer.pad_id, self.tokenizer.num_streams)

    def _save_chat(self, directory: Path, split: str, conversations: list[Messages], tokenizer: Tokenizer,
                   dtype: np.dtype) -> dict[str, int]:
        """Write a split of conversations: the token stream and its scored flags (``<split>_scored.npy``)."""
        packed = pack_conversations(conversations, self.template, tokenizer)
        np.save(directory / f"{split}.npy", packed.tokens.astype(dtype))
        np.save(directory / f"{split}_scored.npy", packed.scored)
        return {"documents": len(conversations), "tokens": len(packed.tokens),
                "scored_tokens": int(packed.scored.sum()), "units": packed.units}


def _pretrained_tokenizer_name(pretrained: Path, tokenizer: str | None, tokenizer_dir: Path | None) -> str:
    """The name of the pretrained folder's tokenizer; an error when ``data.tokenizer`` or ``data.tokenizer_dir`` names
    another one."""
    if tokenizer_dir is not None:
        raise ValueError(f"data.tokenizer_dir={tokenizer_dir} and data.pretrained={pretrained} both give the "
                         f"tokenizer; drop data.tokenizer_dir (the pretrained model reads ids of its own tokenizer)")
    name = load_pretrained_tokenizer(pretrained).name
    if tokenizer not in (None, name):
        raise ValueError(f"data.tokenizer is {tokenizer!r} but the pretrained model {pretrained} (model.init_from) "
                         f"reads the ids of its tokenizer {name!r}; set data.tokenizer: {name}, or leave it unset")
    return name


def _describe_files(path: str | None) -> list[tuple[str, int, int]]:
    """Every file under ``path`` with its size and modification time, so the cache notices changed data."""
    matches = [Path(path)] if Path(path).is_file() else sorted(
        p for p in (Path(path).rglob("*") if Path(path).is_dir() else map(Path, glob.glob(str(path), recursive=True)))
        if p.is_file()
    )
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in matches]
