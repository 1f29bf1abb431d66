"""armm plugin: audio as mu-law companded samples (``audio-mulaw``) or a learned codec's codes (``audio-codec``)."""

from armm_audio.codec import CodecTokenizer
from armm_audio.mulaw import MuLawTokenizer

__all__ = ["CodecTokenizer", "MuLawTokenizer"]
