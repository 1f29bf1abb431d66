"""Hook implementations of the audio plugin."""

import armm
from armm_audio.mulaw import MuLawTokenizer


@armm.hookimpl
def armm_register_tokenizers(register) -> None:
    register(MuLawTokenizer.name, MuLawTokenizer)
