"""Fuzzing with hypothesis: every tokenizer armm registers and the sampler-spec parser fail only in their documented
ways. Other installed plugins are left to their own contract tests (``armm.testing``): these tests check armm's own
tokenizers and samplers, and hold whatever else is registered.

For each tokenizer: decoding any ids inside the vocabulary gives a sample of its modality, ids outside (or not
integers) raise ValueError, and encoding random input of the right kind either works or raises the documented
error (docs/errors.md). For samplers: any string makes ``parse_spec`` / ``build_sampler`` raise ValueError or
succeed, never another exception, and every well-formed spec built from the registry is accepted.
"""

from __future__ import annotations

import inspect
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydoc_data.topics import topics

import armm
from armm.classes import ClassTokenizer
from armm.layout import VocabLayout
from armm.plugins import Plugins, make_plugin_manager
from armm.registry import Registry
from armm.sampling import parse_spec
from armm.tokenizer import Tokenizer
from armm_audio import CodecTokenizer, MuLawTokenizer
from armm_code import CodeTokenizer
from armm_image import PixelTokenizer, VQTokenizer
from armm_protein import ALPHABET, ProteinTokenizer
from armm_text import BPETokenizer

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT_KINDS = ("bytes", "text-bpe", "code-bpe", "protein", "classes")
IMAGE_KINDS = ("image-pixels", "image-vq")


def make_tokenizers() -> dict[str, Tokenizer]:
    """One small instance of every tokenizer armm registers except the composite ``mixed`` (fuzzed through its
    parts)."""
    text = BPETokenizer(vocab_size=320)
    text.fit(list(topics.values())[:20])
    code = CodeTokenizer(vocab_size=320)
    code.fit([inspect.getsource(armm.sampling), inspect.getsource(armm.generation)])
    # An untrained VQ-VAE encodes and decodes exactly as a trained one does, which is all these properties need.
    vq = VQTokenizer(size=8, channels=1, downsample=2, codebook_size=16, code_dim=4, hidden=8, res_blocks=1)
    return {"bytes": armm.ByteTokenizer(), "classes": ClassTokenizer(["zero", "one", "thank you"]), "text-bpe": text, "code-bpe": code, "protein": ProteinTokenizer(),
            "audio-mulaw": MuLawTokenizer(bits=8), "image-pixels": PixelTokenizer(size=4, channels=3, bits=5),
            "image-vq": vq, "audio-codec": CodecTokenizer(clip_seconds=0.1, hop=80, num_codebooks=2, codebook_size=8,
                                                          code_dim=4, channels=8, layers=1)}


TOKENIZERS = make_tokenizers()


def first_party(registry: Registry) -> set[str]:
    """The names armm registers itself: built in, or by the plugins of its own distribution."""
    return {entry.name for entry in registry if entry.provider.split()[0] == "armm"}


def test_every_tokenizer_armm_registers_is_fuzzed():
    assert set(TOKENIZERS) | {"mixed"} == first_party(armm.get_plugins().tokenizers)


def assert_is_a_sample(tokenizer: Tokenizer, sample: object) -> None:
    if tokenizer.name in TEXT_KINDS:
        assert isinstance(sample, str)
    elif tokenizer.name in ("audio-mulaw", "audio-codec"):
        assert sample.dtype == torch.float32 and sample.ndim == 1 and bool(sample.abs().le(1).all())
    else:
        assert sample.dtype == torch.uint8 and tuple(sample.shape) == tokenizer.shape


# --- decode ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_decode_of_any_ids_inside_the_vocabulary_is_a_sample(name):
    tokenizer = TOKENIZERS[name]

    @FUZZ
    @given(st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=100))
    def decode(ids: list[int]) -> None:
        assert_is_a_sample(tokenizer, tokenizer.decode(ids))

    decode()


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_decode_of_an_id_outside_the_vocabulary_raises_value_error(name):
    tokenizer = TOKENIZERS[name]
    outside = st.one_of(st.integers(max_value=-1), st.integers(min_value=tokenizer.vocab_size))
    inside = st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=20)

    @FUZZ
    @given(inside, outside, inside)
    def decode(before: list[int], bad: int, after: list[int]) -> None:
        with pytest.raises(ValueError, match=f"token id {bad} at position {len(before)} is outside the vocabulary"):
            tokenizer.decode([*before, bad, *after])

    decode()


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_decode_of_an_id_that_is_not_an_integer_raises_value_error(name):
    tokenizer = TOKENIZERS[name]

    @FUZZ
    @given(st.one_of(st.floats(), st.text(max_size=3), st.none()))
    def decode(bad: object) -> None:
        with pytest.raises(ValueError, match="is not an integer"):
            tokenizer.decode([0, bad])

    decode()


# --- encode ---------------------------------------------------------------------------------------------------------
def assert_ids(tokenizer: Tokenizer, ids: list[int]) -> None:
    assert all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in ids)


@pytest.mark.parametrize("name", ["bytes", "text-bpe", "code-bpe"])
def test_any_text_encodes_inside_the_vocabulary_and_round_trips(name):
    tokenizer = TOKENIZERS[name]

    @FUZZ
    @given(st.text(max_size=200))
    def encode(text: str) -> None:
        ids = tokenizer.encode(text)
        assert_ids(tokenizer, ids)
        assert tokenizer.decode(ids) == text

    encode()


def test_protein_text_encodes_exactly_when_every_letter_is_a_residue():
    tokenizer = TOKENIZERS["protein"]
    letters = ALPHABET + ALPHABET.lower() + "JjO*-1 \n" + "é"

    @FUZZ
    @given(st.text(alphabet=letters, max_size=80))
    def encode(text: str) -> None:
        if all(letter.upper() in ALPHABET for letter in text):
            ids = tokenizer.encode(text)
            assert_ids(tokenizer, ids)
            assert tokenizer.decode(ids) == text.upper()
        else:
            with pytest.raises(ValueError, match="invalid residue"):
                tokenizer.encode(text)

    encode()


finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


def test_audio_in_range_encodes_and_audio_outside_is_clipped():
    tokenizer = TOKENIZERS["audio-mulaw"]

    @FUZZ
    @given(st.lists(finite, max_size=200))
    def encode(values: list[float]) -> None:
        waveform = torch.tensor(values, dtype=torch.float32)
        ids = tokenizer.encode(waveform)
        assert_ids(tokenizer, ids)
        assert len(ids) == len(values)
        assert ids == tokenizer.encode(waveform.clamp(-1, 1))

    encode()


def test_audio_that_is_not_a_finite_mono_float_waveform_raises_value_error():
    tokenizer = TOKENIZERS["audio-mulaw"]
    not_finite = st.lists(finite, max_size=20).flatmap(
        lambda values: st.sampled_from([float("nan"), float("inf"), float("-inf")]).map(lambda bad: values + [bad]))
    bad_waveforms = st.one_of(
        not_finite.map(lambda values: torch.tensor(values)),
        st.tuples(st.integers(1, 3), st.integers(1, 20)).map(lambda shape: torch.zeros(shape)),
        st.integers(0, 20).map(lambda n: torch.zeros(n, dtype=torch.int16)),
    )

    @FUZZ
    @given(bad_waveforms)
    def encode(waveform: torch.Tensor) -> None:
        with pytest.raises(ValueError, match="audio sample"):
            tokenizer.encode(waveform)

    encode()


def uint8_image(shape: tuple[int, ...]) -> st.SearchStrategy[torch.Tensor]:
    size = torch.Size(shape).numel()
    return st.binary(min_size=size, max_size=size).map(
        lambda data: torch.tensor(list(data), dtype=torch.uint8).view(shape))


@pytest.mark.parametrize("name", IMAGE_KINDS)
def test_images_of_the_right_shape_encode_to_one_id_per_position(name):
    tokenizer = TOKENIZERS[name]

    @FUZZ
    @given(uint8_image(tokenizer.shape))
    def encode(image: torch.Tensor) -> None:
        ids = tokenizer.encode(image)
        assert len(ids) == tokenizer.sequence_length and all(0 <= i < tokenizer.num_codes for i in ids)
        assert_is_a_sample(tokenizer, tokenizer.decode(ids))

    encode()


@pytest.mark.parametrize("name", IMAGE_KINDS)
def test_images_of_another_shape_or_type_raise_the_documented_error(name):
    tokenizer = TOKENIZERS[name]
    shapes = st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple).filter(lambda s: s != tokenizer.shape)

    @FUZZ
    @given(shapes.flatmap(uint8_image), st.sampled_from([torch.float32, torch.int64]))
    def encode(image: torch.Tensor, other_dtype: torch.dtype) -> None:
        with pytest.raises(ValueError, match="convert it with tokenizer.prepare"):
            tokenizer.encode(image)
        with pytest.raises(TypeError, match="encodes torch.uint8 tensors"):
            tokenizer.encode(torch.zeros(tokenizer.shape, dtype=other_dtype))

    encode()


# --- sampler specs --------------------------------------------------------------------------------------------------
LAYOUT = VocabLayout({"text": armm.ByteTokenizer(), "image": PixelTokenizer(size=2, channels=1, bits=2)})


@FUZZ
@given(st.one_of(st.text(), st.text(alphabet=string.ascii_lowercase + "_=,. -+0123456789einf")))
def test_any_string_as_a_sampler_spec_raises_only_value_error(spec):
    try:
        parse_spec(spec)
        armm.build_sampler(spec)
        armm.build_sampler(spec, tokenizer=LAYOUT)
    except ValueError:
        pass


probability = st.one_of(st.floats(0, 1, exclude_min=True), st.just(1))  # (0, 1]
penalty = st.one_of(st.floats(-100, 100), st.integers(-100, 100))  # additive penalties: [-100, 100]
VALUES: dict[str, st.SearchStrategy | None] = {  # every registered sampler → its valid values (None: no value)
    "greedy": None,
    "spans": None,
    "temperature": st.one_of(st.floats(0, 100), st.integers(0, 100)),
    "top_k": st.integers(1, 10**6),
    "top_p": probability,
    "min_p": probability,
    "typical": probability,
    "repetition_penalty": st.one_of(st.floats(0, 1e6, exclude_min=True), st.integers(1, 10**6)),
    "frequency_penalty": penalty,
    "presence_penalty": penalty,
    "no_repeat_ngram": st.integers(1, 10**6),
}


def spec_item(name: str) -> st.SearchStrategy[str]:
    values = VALUES[name]
    pad = st.sampled_from(["", " ", "  "])
    if values is None:
        return st.tuples(pad, pad).map(lambda p: f"{p[0]}{name}{p[1]}")
    return st.tuples(pad, values, pad).map(lambda item: f"{item[0]}{name}={item[1]!r}{item[2]}")


def test_every_sampler_armm_registers_has_a_value_domain_here():
    assert first_party(armm.get_plugins().samplers) == set(VALUES)


@FUZZ
@given(st.lists(st.sampled_from(sorted(VALUES)).flatmap(spec_item), min_size=1, max_size=5).map(",".join))
def test_every_well_formed_spec_from_the_registry_builds(spec):
    names = [name for name, _ in parse_spec(spec)]
    sampler = armm.build_sampler(spec, tokenizer=LAYOUT)
    assert len(sampler.transforms) == len(names)


@pytest.mark.parametrize("spec", ["temperature=" + "9" * 400, "frequency_penalty=" + "9" * 400])
def test_an_integer_too_large_for_a_float_is_a_value_error(spec):
    with pytest.raises(ValueError):
        armm.build_sampler(spec)


# --- the registry checks hold whatever else is installed ------------------------------------------------------------
class Elsewhere:
    """A third-party plugin, registered at run time: a tokenizer and a sampler armm does not know."""

    class Bases(armm.ByteTokenizer):
        name = "elsewhere-bases"

    class Shout:
        def __call__(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            return logits * 2

    @armm.hookimpl
    def armm_register_tokenizers(self, register) -> None:
        register(self.Bases.name, self.Bases)

    @armm.hookimpl
    def armm_register_samplers(self, register) -> None:
        register("elsewhere_shout", self.Shout)


def test_the_registry_checks_hold_with_a_third_party_plugin_installed_and_still_catch_a_missing_one(monkeypatch):
    pm = make_plugin_manager()
    pm.register(Elsewhere(), name="armm-elsewhere")
    plugins = Plugins.from_manager(pm)
    assert {"elsewhere-bases", "elsewhere_shout"} <= {entry.name for entry in [*plugins.tokenizers, *plugins.samplers]}
    monkeypatch.setattr(armm, "get_plugins", lambda: plugins)
    test_every_tokenizer_armm_registers_is_fuzzed()
    test_every_sampler_armm_registers_has_a_value_domain_here()
    monkeypatch.delitem(TOKENIZERS, "protein")
    monkeypatch.delitem(VALUES, "top_k")
    with pytest.raises(AssertionError):
        test_every_tokenizer_armm_registers_is_fuzzed()
    with pytest.raises(AssertionError):
        test_every_sampler_armm_registers_has_a_value_domain_here()
