"""Inspect: ``api`` (what the model computes: next-token distributions, attention maps, per-token surprise,
generation step by step, as dataclasses and tensors), ``plots`` (PNG figures and an HTML page; matplotlib is
imported only when a figure is drawn) and ``cli`` (``armm inspect next|attention|surprise|generation``).

The computing API is re-exported here: ``from armm.inspect import next_token, attention``."""

from armm.inspect.api import (
    REPLACEMENT, VISIBLE, Attention, Candidate, Generation, GenerationStep, LayerCapture, NextToken, Surprise,
    attention, capture_attention, generation_steps, next_token, prompt_ids, surprise, text_pieces, token_label,
    token_labels, token_text, visible,
)

__all__ = [
    "REPLACEMENT",
    "VISIBLE",
    "Attention",
    "Candidate",
    "Generation",
    "GenerationStep",
    "LayerCapture",
    "NextToken",
    "Surprise",
    "attention",
    "capture_attention",
    "generation_steps",
    "next_token",
    "prompt_ids",
    "surprise",
    "text_pieces",
    "token_label",
    "token_labels",
    "token_text",
    "visible",
]
