"""Hook implementations of the audio plugin."""

import armm
from armm_audio.datasets import espeak_phrases, synthetic_notes, synthetic_notes_captioned, synthetic_tones
from armm_audio.codec import CodecTokenizer
from armm_audio.mulaw import MuLawTokenizer
from armm_audio.spoken_digits import espeak_digits


@armm.hookimpl
def armm_register_tokenizers(register) -> None:
    register(MuLawTokenizer.name, MuLawTokenizer)
    register(CodecTokenizer.name, CodecTokenizer)


@armm.hookimpl
def armm_register_datasets(register) -> None:
    register("espeak-phrases", espeak_phrases)
    register("espeak-digits", espeak_digits)
    register("synthetic-tones", synthetic_tones)
    register("synthetic-notes", synthetic_notes)
    register("synthetic-notes-captioned", synthetic_notes_captioned)
