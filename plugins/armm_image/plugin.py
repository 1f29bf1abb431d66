"""Hook implementations of the image plugin. torchvision, PIL, sklearn and lightning load only when used."""

import armm
from armm_image.digits import sklearn_digits, sklearn_digits_captioned, sklearn_digits_labelled, sklearn_digits_named
from armm_image.pixels import PixelTokenizer
from armm_image.vq import VQTokenizer


@armm.hookimpl
def armm_register_tokenizers(register) -> None:
    register(PixelTokenizer.name, PixelTokenizer)
    register(VQTokenizer.name, VQTokenizer)


@armm.hookimpl
def armm_register_datasets(register) -> None:
    register("sklearn-digits", sklearn_digits)
    register("sklearn-digits-labelled", sklearn_digits_labelled)
    register("sklearn-digits-captioned", sklearn_digits_captioned)
    register("sklearn-digits-named", sklearn_digits_named)
