"""Pretrained folders and text for the fine-tuning and LoRA tests: built in-process, nothing downloaded."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "text.yaml"
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
WORDS = {  # two vocabularies: a model trained on one has not seen the other
    "animals": "the a cat dog sat ran on under mat log red big small quick brown fox jumps over lazy".split(),
    "numbers": "one two three four five plus minus equals is not odd even zero seven nine and".split(),
}


def write_text(folder: Path, words: str, files: int = 10, seed: int = 0) -> Path:
    """``files`` text files of sentences drawn from the vocabulary ``WORDS[words]``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sentences = (" ".join(rng.choices(WORDS[words], k=rng.randint(4, 9))) + "." for _ in range(60))
        (folder / f"{i}.txt").write_text(" ".join(sentences))
    return folder


def cli_args(command: str, root: Path, data: Path, *extra: str, steps: int = 0) -> list[str]:
    """``armm fit`` (for ``steps`` steps, validated at the end) or ``armm validate`` of recipes/text.yaml on the text
    in ``data``, shrunk to seconds, writing under ``root``; ``extra`` adds or replaces options."""
    trainer = ["--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps)] if steps else []
    return [
        command, "-c", str(RECIPE), "--data.path", str(data), "--data.dataset", "null", "--data.seq_len", "32",
        "--data.batch_size", "8", "--data.val_fraction", "0.2", "--data.cache_dir", str(root / "cache"),
        "--model.warmup_steps", "2", "--optimizer.lr", "0.003", "--trainer.limit_val_batches", "4",
        "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(root / "run"), *trainer, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory) -> Path:
    """A tiny random Qwen2 (biased q, k, v; untied output layer) saved by ``transformers``, with a byte-level BPE
    tokenizer.json, a tokenizer_config.json and a chat_template.jinja."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("qwen2")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([" ".join(WORDS["animals"] + WORDS["numbers"])] * 4, trainer)
    backend.save(str(folder / "tokenizer.json"))
    settings = {"eos_token": "<|im_end|>", "chat_template": CHAT_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    config = transformers.Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).float().save_pretrained(folder)
    return folder
