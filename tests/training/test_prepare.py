"""Streaming data preparation (``armm.training.prepare``) against references built from whole, in-memory encodings:
the document split, a single document's token-stream split, explicit held-out files, gzip, long documents, workers."""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from armm.cli import main
from armm.files import read_text, read_text_pieces
from armm.tokenizer import ByteTokenizer
from armm.training.data import TokenDataModule
from armm.training.module import ARModule
from armm_code import CodeTokenizer
from armm_text import BPETokenizer
from tests.training.conftest import cli_args, write_text


def prepared(tmp_path: Path, **options) -> tuple[dict[str, np.ndarray], dict]:
    """Prepare a TokenDataModule's cache; its arrays and meta.json."""
    defaults = dict(tokenizer="bytes", seq_len=16, val_fraction=0.2, cache_dir=tmp_path / "cache", seed=3)
    data = TokenDataModule(**{**defaults, **options})
    data.prepare_data()
    arrays = {split: np.load(data.cache_path / f"{split}.npy") for split in ("train", "val", "test")
              if (data.cache_path / f"{split}.npy").is_file()}
    return arrays, json.loads((data.cache_path / "meta.json").read_text())


def documents_of(tokenizer, texts: list[str]) -> np.ndarray:
    return np.array([t for text in texts for t in tokenizer.encode_document(text)], dtype=np.int64)


def test_a_corpus_of_files_splits_by_documents_as_an_in_memory_permutation_does(tmp_path):
    folder = write_text(tmp_path / "corpus", "animals", files=9)
    arrays, meta = prepared(tmp_path, path=str(folder))
    texts = ByteTokenizer().read(folder)
    order = torch.randperm(9, generator=torch.Generator().manual_seed(3)).tolist()  # the reference split
    n_val = round(9 * 0.2)
    np.testing.assert_array_equal(arrays["train"], documents_of(ByteTokenizer(), [texts[i] for i in order[n_val:]]))
    np.testing.assert_array_equal(arrays["val"], documents_of(ByteTokenizer(), [texts[i] for i in order[:n_val]]))
    assert meta["split"]["rule"] == "documents"
    listed = [(Path(entry["source"]).name, entry["documents"]) for entry in meta["split"]["val"]]
    assert listed == [(f"{i}.txt", [0]) for i in sorted(order[:n_val])]
    assert meta["val"] == {"documents": n_val, "tokens": len(arrays["val"]), "scored_tokens": len(arrays["val"]) - 1,
                           "units": sum(len(texts[i].encode()) for i in order[:n_val])}
    assert meta["dtype"] == "uint16" and arrays["train"].dtype == np.uint16


def test_one_document_is_split_by_tokens_its_last_fraction_validating(tmp_path):
    text = "héllo wörld, " * 40
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    arrays, meta = prepared(tmp_path, path=str(tmp_path / "one.txt"))
    whole = documents_of(ByteTokenizer(), [text])
    cut = len(whole) - round(len(whole) * 0.2)
    np.testing.assert_array_equal(arrays["train"], whole[:cut])
    np.testing.assert_array_equal(arrays["val"], whole[cut:])
    assert meta["split"] == {"rule": "token-stream", "val_fraction": 0.2, "cut": cut}
    assert meta["val"]["units"] == len(whole[cut:]) - 1 and meta["train"]["units"] == len(text.encode()) - meta["val"]["units"]


def test_one_sample_of_a_samples_layout_is_still_refused(tmp_path):
    (tmp_path / "one.txt").write_text("abc")
    with pytest.raises(ValueError, match="holds 1 sample; a validation split needs at least 2"):
        prepared(tmp_path, path=str(tmp_path / "one.txt"), layout="samples")


def test_a_long_document_read_in_pieces_encodes_as_the_whole_text(tmp_path, monkeypatch):
    import armm_text.bpe

    text = "".join(f"Paragraph {i}: the cat sat on the mat.\n\n  Indented,\ttabbed\r\nline {i}.\n" for i in range(400))
    (tmp_path / "big.txt").write_text(text, encoding="utf-8", newline="")
    tokenizer = BPETokenizer(vocab_size=320)
    tokenizer.fit([text])
    tokenizer.save(tmp_path)
    options = dict(tokenizer="text-bpe", tokenizer_dir=tmp_path, path=str(tmp_path / "big.txt"), seq_len=64)
    whole, _ = prepared(tmp_path / "whole", **options)
    monkeypatch.setattr(armm_text.bpe, "LONG_FILE_BYTES", 1000)
    monkeypatch.setattr(armm_text.bpe, "read_text_pieces", functools.partial(read_text_pieces, piece_chars=500))
    pieces, meta = prepared(tmp_path / "pieces", **options)
    for split in ("train", "val"):
        np.testing.assert_array_equal(pieces[split], whole[split])
    assert meta["train"]["units"] + meta["val"]["units"] == len(text.encode())


def test_a_trainable_tokenizer_fits_on_the_training_documents_only(tmp_path):
    folder = write_text(tmp_path / "a", "animals", files=5)
    held = torch.randperm(5, generator=torch.Generator().manual_seed(3))[0].item()  # one of five validates
    (folder / f"{held}.txt").write_text(" ".join(["zebra quagga"] * 200))
    _, meta = prepared(tmp_path, path=str(folder), tokenizer="text-bpe", tokenizer_options={"vocab_size": 300},
                       val_fraction=0.2)
    assert [Path(entry["source"]).name for entry in meta["split"]["val"]] == [f"{held}.txt"]
    fitted = BPETokenizer.load(next((tmp_path / "cache").iterdir()) / "tokenizer")
    reference = BPETokenizer(vocab_size=300)
    reference.fit([read_text(p) for p in sorted(folder.glob("*.txt")) if p.name != f"{held}.txt"])
    assert fitted.backend.get_vocab() == reference.backend.get_vocab()


def test_fitting_says_so_and_an_interrupted_preparation_leaves_no_half_written_cache(tmp_path, monkeypatch,
                                                                                     capsys):
    folder = write_text(tmp_path / "a", "animals", files=5)
    options = dict(path=str(folder), tokenizer="text-bpe", tokenizer_options={"vocab_size": 300})

    def interrupted(self, texts):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(BPETokenizer, "fit", interrupted)
        with pytest.raises(KeyboardInterrupt):
            prepared(tmp_path, **options)
    assert list((tmp_path / "cache").iterdir()) == []  # no <key>.tmp for the next run to trip over
    prepared(tmp_path, **options)
    [cache] = (tmp_path / "cache").iterdir()
    assert (cache / "meta.json").is_file() and not cache.name.endswith(".tmp")
    said = capsys.readouterr().err
    assert "fitting tokenizer 'text-bpe' on the training documents" in said and "fitted tokenizer 'text-bpe' in" in said


def test_held_out_val_and_test_paths_are_used_whole_and_recorded(tmp_path):
    train, val, test = (write_text(tmp_path / name, "animals", files=files, seed=seed)
                        for name, files, seed in (("train", 3, 0), ("val", 2, 1), ("test", 1, 2)))
    arrays, meta = prepared(tmp_path, path=str(train), val_path=str(val), test_path=str(test))
    tokenizer = ByteTokenizer()
    for split, folder in (("train", train), ("val", val), ("test", test)):
        np.testing.assert_array_equal(arrays[split], documents_of(tokenizer, tokenizer.read(folder)))
    assert meta["split"]["rule"] == "explicit"
    assert [Path(e["source"]).name for e in meta["split"]["val"]] == ["0.txt", "1.txt"]
    assert meta["test"]["documents"] == 1 and len(meta["split"]["test"]) == 1


def test_the_test_split_is_scored_by_armm_test(tmp_path):
    train = write_text(tmp_path / "train", "animals", files=4)
    test = write_text(tmp_path / "test", "animals", files=1, seed=5)
    data = TokenDataModule(path=str(train), test_path=str(test), seq_len=16, batch_size=4, cache_dir=tmp_path / "c")
    module = ARModule(preset="gpt2-tiny", overrides={"n_layer": 1, "n_head": 2, "d_model": 16, "max_seq_len": 16})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_test_batches=3, default_root_dir=tmp_path)
    result = trainer.test(module, datamodule=data, verbose=False)[0]
    assert result["test/bpu"] == pytest.approx(result["test/loss"] / np.log(2) / data.split_units_per_token("test"))


def test_gzip_files_prepare_the_same_arrays_as_their_plain_versions(tmp_path):
    plain, packed = tmp_path / "plain", tmp_path / "gz"
    write_text(plain, "numbers", files=5)
    (plain / "p.fasta").write_text(">a\nMKTAYIAK\nQRQISFVK\n>b\nMSTNPKPQRK\n>c\nMAAAKKW\n")
    packed.mkdir()
    for path in plain.iterdir():
        (packed / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
    for tokenizer in ("bytes", "protein"):
        ours, _ = prepared(tmp_path / f"a-{tokenizer}", path=str(plain), tokenizer=tokenizer)
        theirs, _ = prepared(tmp_path / f"b-{tokenizer}", path=str(packed), tokenizer=tokenizer)
        for split in ("train", "val"):
            np.testing.assert_array_equal(ours[split], theirs[split])


def test_worker_processes_prepare_the_same_arrays(tmp_path):
    folder = write_text(tmp_path / "corpus", "numbers", files=6)
    alone, _ = prepared(tmp_path / "alone", path=str(folder), prepare_workers=0)
    workers, _ = prepared(tmp_path / "workers", path=str(folder), prepare_workers=2)
    for split in ("train", "val"):
        np.testing.assert_array_equal(alone[split], workers[split])


def test_text_bpe_encodes_batches_as_one_by_one_and_code_bpe_keeps_fill_in_the_middle():
    texts = ["def f(x):\n    return x  # <|endoftext|>\n", "class A:\n    pass\n", "x = [1, 2, 3]\n" * 5]
    text = BPETokenizer(vocab_size=300)
    text.fit(texts)
    assert text.encode_batch(texts) == [text.encode(t) for t in texts]  # special strings stay text
    assert text.encode_documents(texts) == [text.encode_document(t) for t in texts]
    for fim_rate in (0.0, 0.9):
        batched, single, plain = (CodeTokenizer(vocab_size=300, fim_rate=fim_rate, fim_seed=1) for _ in range(3))
        for tokenizer in (batched, single, plain):
            tokenizer.fit(texts)
        documents = batched.encode_documents(texts * 4)
        assert documents == [single.encode_document(t) for t in texts * 4]
        unchanged = [[plain.bos_id, *plain.encode(t), plain.eos_id] for t in texts * 4]
        assert (documents == unchanged) == (fim_rate == 0)  # FIM moved some documents


def test_armm_fit_trains_on_a_single_text_file(tmp_path):
    (tmp_path / "one.txt").write_text(" ".join(["the cat sat on the mat."] * 150))
    main(cli_args("fit", tmp_path, tmp_path / "one.txt", "--model.overrides", "{n_layer: 1, d_model: 32, n_head: 2}",
                  "--data.tokenizer_options", "{vocab_size: 300}", steps=2))
    meta = json.loads(next((tmp_path / "cache").glob("*/meta.json")).read_text())
    assert meta["split"]["rule"] == "token-stream" and (tmp_path / "run" / "export" / "final").is_dir()
