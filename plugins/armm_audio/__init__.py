"""armm plugin: audio as mu-law companded samples (``audio-mulaw``)."""

from armm_audio.mulaw import MuLawTokenizer

__all__ = ["MuLawTokenizer"]
