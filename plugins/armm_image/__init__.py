"""armm plugin: images as token sequences — raw pixel values ("image-pixels") or VQ-VAE codes ("image-vq")."""

from armm_image.digits import load_digits_images
from armm_image.pixels import PixelTokenizer
from armm_image.vq import VQTokenizer

__all__ = ["PixelTokenizer", "VQTokenizer", "load_digits_images"]
