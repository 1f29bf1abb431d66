"""The hooks an armm plugin may implement. Every hook is a documented stub.

A plugin is any module or object with functions decorated by ``armm.hookimpl`` and named after
these specs, published under the ``armm.plugins`` entry-point group::

    [project.entry-points."armm.plugins"]
    dna = "armm_dna.plugin"

Hooks follow the register-callback style: armm passes a ``register(name, obj)`` callable and owns
the registry, so it can refuse duplicate names (naming both providers) and list everything.
A hook implementation may accept fewer arguments than its spec, so specs can grow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("armm")
hookimpl = pluggy.HookimplMarker("armm")


@hookspec
def armm_register_tokenizers(register: Callable[[str, type[Any]], None]) -> None:
    """Register tokenizer classes: call ``register(name, cls)`` once per tokenizer.

    ``cls`` subclasses ``armm.Tokenizer``; ``name`` is what users type (``--tokenizer NAME``) and
    what a saved model directory records to load the tokenizer back.
    """


@hookspec
def armm_register_samplers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register logits transforms: call ``register(name, factory)`` once per transform.

    ``factory(value)`` (or ``factory()`` for a bare name) returns a callable
    ``(logits [B, V], tokens [B, T]) -> logits`` that sets removed entries to ``-inf``; it is what a
    sampler spec item ``name=value`` builds. ``tokens`` is left-padded with ``-1``.
    """


@hookspec
def armm_register_datasets(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register built-in datasets that need no download: call ``register(name, load)`` once per dataset.

    ``load(tokenizer)`` returns a list of samples of the tokenizer's modality (it may use the
    tokenizer's settings, e.g. an image size or an audio sample rate). Recipes name a dataset with
    ``data.dataset: NAME``; ``armm plugins`` lists them.
    """
