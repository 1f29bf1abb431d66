"""The image plugin: pixel tokens (8-bit, fewer bits, k-means palette), VQ-VAE codes, PNG/JPEG/NPY reading, PNG/JPEG grids, NPY arrays."""

import struct
import zlib
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import strategies as st

import armm
from armm.testing import TokenizerContract
from armm_image import PixelTokenizer, VQTokenizer, load_digits_images
from armm_image.image_io import MAX_PIXELS
from armm_image.metrics import code_usage, mse, psnr

VQ_OPTIONS = dict(size=8, channels=1, downsample=2, codebook_size=32, code_dim=8, hidden=32, res_blocks=1, seed=0)
VQ_PSNR_BAR = 18.0  # dB on held-out 8x8 digits: the trained model reaches ~21, an untrained one ~7.5


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_digits_images(8, "train")[0]


@pytest.fixture(scope="module")
def held_out() -> torch.Tensor:
    return load_digits_images(8, "test")[0]


@pytest.fixture(scope="module")
def trained_vq(digits) -> VQTokenizer:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 8x8 convolutions train fastest on one thread, also on a busy machine
    try:
        tokenizer = VQTokenizer(**VQ_OPTIONS)
        tokenizer.fit(digits, steps=300, batch_size=64, lr=2e-3, seed=0)
    finally:
        torch.set_num_threads(threads)
    return tokenizer


@pytest.fixture(scope="module")
def palette_tokenizer(digits) -> PixelTokenizer:
    tokenizer = PixelTokenizer(size=8, channels=1, palette_size=8)
    tokenizer.fit(digits)
    return tokenizer


def random_images(shape: tuple[int, ...], count: int = 3, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator) for _ in range(count)]


def uint8_images(shape: tuple[int, ...]) -> st.SearchStrategy:
    size = torch.Size(shape).numel()

    def as_image(data: bytes) -> torch.Tensor:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(shape)

    return st.binary(min_size=size, max_size=size).map(as_image)


def read_png(path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    pixels = np.array(Image.open(path))
    return torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1)).permute(2, 0, 1)


def write_png(image: torch.Tensor, path) -> None:
    from PIL import Image

    Image.fromarray(image.permute(1, 2, 0).squeeze(2).numpy()).save(path)


class ImageContract(TokenizerContract):
    write_round_trips = False  # all samples go into one PNG grid; see test_grid_* below
    lossy_formats = (".jpg", ".jpeg")

    def assert_same_sample(self, actual, expected):
        assert actual.dtype == torch.uint8 and torch.equal(actual, expected)


# --- contract suites -------------------------------------------------------------------------------
class TestPixelsContract(ImageContract):
    @pytest.fixture
    def tokenizer(self):
        return PixelTokenizer(size=8, channels=1)

    @pytest.fixture
    def samples(self, digits):
        return list(digits[:3])

    def sample_strategy(self, tokenizer):
        return uint8_images(tokenizer.shape)


class TestFewerBitsContract(ImageContract):
    lossless = False

    @pytest.fixture
    def tokenizer(self):
        return PixelTokenizer(size=(4, 6), channels=3, bits=3)

    @pytest.fixture
    def samples(self):
        return random_images((3, 4, 6))

    def assert_same_sample(self, actual, expected):
        assert actual.shape == expected.shape and actual.dtype == torch.uint8
        assert (actual.int() - expected.int()).abs().max() <= 2 ** (8 - 3) // 2  # half a bin

    def sample_strategy(self, tokenizer):
        return uint8_images(tokenizer.shape)


class TestPaletteContract(ImageContract):
    lossless = False

    @pytest.fixture
    def tokenizer(self, palette_tokenizer):
        return palette_tokenizer

    @pytest.fixture
    def samples(self, held_out):
        return list(held_out[:3])

    def assert_same_sample(self, actual, expected):
        assert actual.shape == expected.shape and actual.dtype == torch.uint8
        assert (actual.int() - expected.int()).abs().max() <= 24  # half the widest gap of the fitted 8 greys


class TestClassConditionalContract(ImageContract):
    lossless = False

    @pytest.fixture
    def tokenizer(self):
        return PixelTokenizer(size=8, channels=1, bits=4, num_classes=10)

    @pytest.fixture
    def samples(self, held_out):
        return list(held_out[:3])

    def assert_same_sample(self, actual, expected):
        assert actual.shape == expected.shape and actual.dtype == torch.uint8
        assert (actual.int() - expected.int()).abs().max() <= 2 ** (8 - 4) // 2  # half a bin

    def sample_strategy(self, tokenizer):
        return uint8_images(tokenizer.shape)


class TestVQContract(ImageContract):
    lossless = False

    @pytest.fixture
    def tokenizer(self, trained_vq):
        return trained_vq

    @pytest.fixture
    def samples(self, held_out):
        return list(held_out[:4])

    def assert_same_sample(self, actual, expected):
        assert actual.shape == expected.shape and actual.dtype == torch.uint8
        assert psnr(actual, expected) > VQ_PSNR_BAR - 4  # one image varies more than the held-out mean


# --- image-pixels ----------------------------------------------------------------------------------
def test_raster_order_is_row_major_with_channels_interleaved():
    red = [[1, 4, 7], [10, 13, 16]]
    green = [[2, 5, 8], [11, 14, 17]]
    blue = [[3, 6, 9], [12, 15, 18]]
    image = torch.tensor([red, green, blue], dtype=torch.uint8)
    tokenizer = PixelTokenizer(size=(2, 3), channels=3)
    assert tokenizer.encode(image) == list(range(1, 19))
    assert torch.equal(tokenizer.decode(list(range(1, 19))), image)


@pytest.mark.parametrize("bits", range(1, 9))
def test_fewer_bits_keep_the_high_bits_and_decode_to_the_bin_centre(bits):
    tokenizer = PixelTokenizer(size=16, channels=1, bits=bits)
    image = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    width = 2 ** (8 - bits)
    assert tokenizer.encode(image) == [value // width for value in range(256)]
    centres = [value // width * width + width // 2 for value in range(256)]
    assert tokenizer.decode(tokenizer.encode(image)).flatten().tolist() == centres
    assert tokenizer.vocab_size == 2**bits + 3
    assert tokenizer.special_tokens == {"bos": 2**bits, "eos": 2**bits + 1, "pad": 2**bits + 2}


def test_units_are_dims_or_pixels_with_a_palette(palette_tokenizer, digits):
    rgb = PixelTokenizer(size=8, channels=3)
    assert (rgb.unit, rgb.num_units(torch.zeros(3, 8, 8, dtype=torch.uint8))) == ("dim", 192)
    palette = palette_tokenizer
    assert (palette.unit, palette.num_units(digits[0]), len(palette.encode(digits[0]))) == ("pixel", 64, 64)


def test_palette_beats_uniform_quantisation_with_as_many_ids(palette_tokenizer, held_out):
    three_bits = PixelTokenizer(size=8, channels=1, bits=3)  # also 8 ids a pixel
    by_palette = torch.stack([palette_tokenizer.decode(palette_tokenizer.encode(x)) for x in held_out])
    by_bits = torch.stack([three_bits.decode(three_bits.encode(x)) for x in held_out])
    assert mse(by_palette, held_out) < 0.5 * mse(by_bits, held_out)
    assert psnr(by_palette, held_out) > 29.0


def brute_force_nearest(image: torch.Tensor, palette: list[list[int]]) -> list[int]:
    channels, height, width = image.shape
    ids = []
    for y in range(height):
        for x in range(width):
            pixel = [int(image[c, y, x]) for c in range(channels)]
            distances = [sum((p - q) ** 2 for p, q in zip(pixel, colour)) for colour in palette]
            ids.append(distances.index(min(distances)))  # the first of equally near colours
    return ids


def test_palette_encode_picks_the_nearest_colour():
    tokenizer = PixelTokenizer(size=(5, 7), channels=3, palette_size=16)
    tokenizer.fit(random_images((3, 5, 7), count=20, seed=1))
    assert tokenizer.palette.shape == (16, 3) and tokenizer.palette.dtype == torch.uint8
    for image in random_images((3, 5, 7), count=3, seed=2):
        ids = tokenizer.encode(image)
        assert ids == brute_force_nearest(image, tokenizer.palette.tolist())
        assert torch.equal(tokenizer.decode(ids), tokenizer.palette[ids].T.reshape(3, 5, 7))


def test_palette_ties_go_to_the_first_colour():
    tokenizer = PixelTokenizer(size=(1, 3), channels=1, palette_size=3)
    tokenizer.palette = torch.tensor([[10], [10], [30]], dtype=torch.uint8)
    image = torch.tensor([[[10, 20, 30]]], dtype=torch.uint8)
    assert tokenizer.encode(image) == brute_force_nearest(image, [[10], [10], [30]]) == [0, 0, 2]


def test_palette_must_be_fitted_and_fixed_vocabularies_cannot_be():
    with pytest.raises(ValueError, match="call fit"):
        PixelTokenizer(size=2, channels=1, palette_size=4).encode(torch.zeros(1, 2, 2, dtype=torch.uint8))
    with pytest.raises(NotImplementedError, match="image-pixels"):
        PixelTokenizer(size=2, channels=1).fit([torch.zeros(1, 2, 2, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="bits"):
        PixelTokenizer(bits=4, palette_size=16)


@pytest.mark.parametrize("make", [lambda: PixelTokenizer(size=8, channels=1), lambda: VQTokenizer(**VQ_OPTIONS)])
def test_decode_skips_specials_then_pads_with_zeros_or_truncates(make, held_out):
    tokenizer = make()
    ids = tokenizer.encode(held_out[0])
    n, special = tokenizer.sequence_length, tokenizer.special_tokens
    assert len(ids) == n
    assert torch.equal(tokenizer.decode([special["bos"], *ids, special["eos"], special["pad"]]), tokenizer.decode(ids))
    assert torch.equal(tokenizer.decode(ids[:5]), tokenizer.decode(ids[:5] + [0] * (n - 5)))
    assert torch.equal(tokenizer.decode(ids + ids[:7]), tokenizer.decode(ids))
    assert tokenizer.decode([]).shape == tokenizer.shape


def test_encode_names_the_expected_shape_and_how_to_convert():
    tokenizer = PixelTokenizer(size=8, channels=1)
    with pytest.raises(ValueError, match=r"\[1, 8, 8\].*prepare"):
        tokenizer.encode(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        tokenizer.encode(torch.zeros(1, 8, 8))
    assert tokenizer.prepare(torch.full((3, 16, 16), 7, dtype=torch.uint8)).shape == (1, 8, 8)


def test_default_tokenizers_are_32px_rgb():
    image = random_images((3, 32, 32), count=1)[0]
    pixels, vq = PixelTokenizer(), VQTokenizer()
    assert (len(pixels.encode(image)), pixels.vocab_size) == (3072, 259)
    assert (len(vq.encode(image)), vq.vocab_size, vq.num_units(image)) == (64, 515, 3072)


# --- class conditioning ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def conditional() -> PixelTokenizer:
    return PixelTokenizer(size=8, channels=1, bits=4, num_classes=10)


def test_class_tokens_follow_the_unchanged_specials(conditional):
    assert conditional.vocab_size == 16 + 3 + 10
    assert conditional.special_tokens == PixelTokenizer(size=8, channels=1, bits=4).special_tokens
    assert conditional.special_tokens == {"bos": 16, "eos": 17, "pad": 18}
    assert [conditional.class_id(label) for label in range(10)] == list(range(19, 29))
    assert conditional.class_id(torch.tensor(7)) == conditional.class_id(7) == 26  # dataset labels may be tensors


def test_a_labelled_document_is_bos_class_pixels_eos(conditional, held_out):
    image = held_out[0]
    pixels = conditional.encode(image)
    assert conditional.encode_document((7, image)) == [16, 26, *pixels, 17]
    assert conditional.encode_document((torch.tensor(0), image)) == [16, 19, *pixels, 17]
    assert conditional.encode_document(image) == [16, *pixels, 17]  # an image alone has no class
    assert conditional.num_units((7, image)) == conditional.num_units(image) == len(pixels) == 64


def test_a_prompt_is_a_class_label_or_empty(conditional):
    assert conditional.encode_prompt("7") == [26]
    assert conditional.encode_prompt("0") == [19]
    assert conditional.encode_prompt("") == []
    for bad in ("seven", "7.0", "10", "-1"):
        with pytest.raises(ValueError, match=r"0\.\.9"):
            conditional.encode_prompt(bad)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        conditional.encode_document((10, torch.zeros(1, 8, 8, dtype=torch.uint8)))
    with pytest.raises(ValueError, match=r"0\.\.9"):
        conditional.class_id(True)


def test_without_classes_prompts_and_labels_are_refused():
    tokenizer = PixelTokenizer(size=8, channels=1, bits=4)
    assert tokenizer.encode_prompt("") == []
    with pytest.raises(ValueError, match="no classes"):
        tokenizer.encode_prompt("7")
    with pytest.raises(ValueError, match="num_classes"):
        tokenizer.encode_document((7, torch.zeros(1, 8, 8, dtype=torch.uint8)))
    with pytest.raises(ValueError, match="num_classes"):
        PixelTokenizer(num_classes=0)


def test_decode_skips_class_tokens_anywhere(conditional, held_out):
    pixels = conditional.encode(held_out[1])
    expected = conditional.decode(pixels)
    assert torch.equal(conditional.decode(conditional.encode_document((3, held_out[1]))), expected)
    interleaved = [token for pixel in pixels for token in (pixel, 19 + pixel % 10)]
    assert torch.equal(conditional.decode(interleaved), expected)


def test_save_and_load_keep_the_classes(conditional, held_out, tmp_path):
    conditional.save(tmp_path)
    loaded = PixelTokenizer.load(tmp_path)
    assert (loaded.num_classes, loaded.vocab_size, loaded.bits) == (10, 29, 4)
    assert loaded.encode_prompt("5") == conditional.encode_prompt("5")
    assert loaded.encode_document((5, held_out[2])) == conditional.encode_document((5, held_out[2]))


def test_only_a_palette_without_colours_needs_fitting(digits, palette_tokenizer, tmp_path):
    assert not PixelTokenizer(size=8, channels=1, bits=4, num_classes=10).needs_fit
    unfitted = PixelTokenizer(size=8, channels=1, palette_size=8)
    assert unfitted.needs_fit and not palette_tokenizer.needs_fit
    unfitted.fit([(index % 10, image) for index, image in enumerate(digits[:200])])  # labelled samples fit too
    reference = PixelTokenizer(size=8, channels=1, palette_size=8)
    reference.fit(digits[:200])
    assert not unfitted.needs_fit and torch.equal(unfitted.palette, reference.palette)
    unfitted.save(tmp_path)
    assert not PixelTokenizer.load(tmp_path).needs_fit


# --- reading and writing ---------------------------------------------------------------------------
def flat_image(colour: list[int], height: int, width: int) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.uint8).view(-1, 1, 1).expand(-1, height, width).contiguous()


def test_read_converts_channels_and_size(tmp_path, digits):
    from PIL import Image

    write_png(digits[0], tmp_path / "a_digit.png")
    write_png(flat_image([200, 100, 50], 16, 16), tmp_path / "b_rgb.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "c_rgba.png")
    Image.new("RGB", (24, 24), (90, 90, 90)).save(tmp_path / "d_grey.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")

    grey = PixelTokenizer(size=8, channels=1).read(tmp_path)
    assert len(grey) == 4 and all(image.shape == (1, 8, 8) and image.dtype == torch.uint8 for image in grey)
    assert torch.equal(grey[0], digits[0])  # PNG is lossless and the size already fits
    luma = 0.299 * 200 + 0.587 * 100 + 0.114 * 50
    assert (grey[1].float() - luma).abs().max() <= 1  # ITU-R 601 grey, resizing a flat image keeps it flat
    assert (grey[3].int() - 90).abs().max() <= 2  # JPEG is lossy

    rgb = PixelTokenizer(size=4, channels=3).read(tmp_path / "*.png")
    assert [image.shape for image in rgb] == [(3, 4, 4)] * 3
    assert torch.equal(rgb[2], flat_image([10, 20, 30], 4, 4))  # alpha dropped
    assert torch.equal(rgb[0][0], rgb[0][1]) and torch.equal(rgb[0][1], rgb[0][2])  # grey repeated


def test_read_names_a_corrupt_file_and_a_folder_without_images(tmp_path):
    tokenizer = PixelTokenizer(size=8, channels=1)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="broken.png"):
        tokenizer.read(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=str(empty)):
        tokenizer.read(empty)


def png_claiming(width: int, height: int) -> bytes:
    """A bilevel PNG whose header claims ``width`` x ``height`` pixels, with no pixel data behind it: a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit per pixel, grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height, size", [
    (20000, 20000, "over "),  # past PIL's own decompression-bomb limit, which stops it as it opens
    (8193, 8192, "8193x8192"),  # one column past armm's cap, below PIL's limit
])
def test_an_image_with_too_many_pixels_is_refused_before_decoding(tmp_path, width, height, size):
    assert width * height > MAX_PIXELS
    (tmp_path / "huge.png").write_bytes(png_claiming(width, height))
    with pytest.raises(ValueError, match=rf"huge.png is {size}.* pixels, more than the {MAX_PIXELS} armm reads; "
                                         r"shrink the image first, or raise armm_image.image_io.MAX_PIXELS"):
        PixelTokenizer(size=8, channels=1).read(tmp_path)


def test_an_image_at_the_pixel_cap_is_decoded(tmp_path):
    """The cap itself is allowed: the header-only file gets as far as decoding, which finds no pixel data."""
    (tmp_path / "edge.png").write_bytes(png_claiming(8192, MAX_PIXELS // 8192))
    with pytest.raises(ValueError, match="edge.png is not a readable PNG or JPEG image"):
        PixelTokenizer(size=8, channels=1).read(tmp_path)


@pytest.mark.parametrize("channels", [1, 3])
def test_grid_puts_each_sample_in_its_tile(tmp_path, channels):
    samples = random_images((channels, 8, 8), count=10)
    [path] = PixelTokenizer(size=8, channels=channels).write(samples, tmp_path / "grid.anything", nrow=5)
    assert path == tmp_path / "grid.png"
    grid = read_png(path)
    padding, tile = 2, 8 + 2
    assert grid.shape == (channels, 2 * tile + padding, 5 * tile + padding)
    covered = torch.zeros(grid.shape[1:], dtype=torch.bool)
    for k, sample in enumerate(samples):
        y, x = padding + (k // 5) * tile, padding + (k % 5) * tile
        assert torch.equal(grid[:, y : y + 8, x : x + 8], sample)
        covered[y : y + 8, x : x + 8] = True
    assert (grid[:, ~covered] == 128).all()  # grey padding between tiles


def test_one_written_sample_reads_back_exactly(tmp_path):
    tokenizer = PixelTokenizer(size=(5, 7), channels=3)
    [image] = random_images((3, 5, 7), count=1)
    [path] = tokenizer.write([image], tmp_path / "one")
    assert torch.equal(tokenizer.read(path)[0], image)


def test_npy_keeps_every_sample_exactly_and_reads_back(tmp_path):
    tokenizer = PixelTokenizer(size=(5, 7), channels=3)
    samples = random_images((3, 5, 7), count=4)
    [path] = tokenizer.write(samples, tmp_path / "batch.npy")
    array = np.load(path)
    assert path == tmp_path / "batch.npy" and array.dtype == np.uint8 and array.shape == (4, 3, 5, 7)
    assert all(torch.equal(a, b) for a, b in zip(tokenizer.read(path), samples, strict=True))
    with pytest.raises(FileNotFoundError, match=r"no images \(.png, .jpg, .jpeg\)"):  # not training data in a folder
        tokenizer.read(tmp_path)


def test_jpeg_is_a_grid_pil_reads_as_jpeg(tmp_path):
    from PIL import Image

    samples = random_images((1, 8, 8), count=4)
    [path] = PixelTokenizer(size=8, channels=1).write(samples, tmp_path / "grid", format=".jpg")
    with Image.open(path) as image:
        assert (path.name, image.format, image.mode, image.size) == ("grid.jpg", "JPEG", "L", (2 * 10 + 2,) * 2)


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 8, 8), np.float32), "holds a float32 array of shape \\[2, 8, 8\\]; image .npy files hold uint8"),
    (np.zeros((8, 8), np.uint8), "holds a uint8 array of shape \\[8, 8\\]"),
])
def test_an_npy_file_of_something_else_is_refused_naming_it(tmp_path, array, message):
    np.save(tmp_path / "other.npy", array)
    with pytest.raises(ValueError, match="other.npy " + message):
        PixelTokenizer(size=8, channels=1).read(tmp_path / "other.npy")


# --- digits dataset --------------------------------------------------------------------------------
def test_digits_split_is_a_deterministic_partition_of_the_scaled_dataset():
    from sklearn.datasets import load_digits

    train, train_labels = load_digits_images(8, "train", seed=3)
    test, test_labels = load_digits_images(8, "test", seed=3)
    assert train.shape == (1438, 1, 8, 8) and test.shape == (359, 1, 8, 8) and train.dtype == torch.uint8
    reference = load_digits()
    scaled = Counter(
        (bytes(int(v * 255 / 16 + 0.5) for v in image.flatten()), int(label))
        for image, label in zip(reference.images, reference.target)
    )
    ours = Counter(
        (bytes(image.flatten().tolist()), int(label))
        for image, label in zip([*train, *test], [*train_labels, *test_labels])
    )
    assert ours == scaled
    assert torch.equal(load_digits_images(8, "test", seed=3)[0], test)
    assert not torch.equal(load_digits_images(8, "test", seed=4)[0], test)


def test_upscaled_digits_average_back_to_the_originals():
    small, labels = load_digits_images(8, "test")
    large, large_labels = load_digits_images(32, "test")
    assert large.shape == (359, 1, 32, 32) and torch.equal(labels, large_labels)
    error = (F.avg_pool2d(large.float(), 4) - small.float()).abs().mean()
    assert error < 16  # 11 as made; 92 if transposed, 64 if shifted by a pixel


# --- image-vq --------------------------------------------------------------------------------------
def test_trained_vq_passes_the_reconstruction_bar_and_an_untrained_one_fails(trained_vq, held_out):
    untrained = VQTokenizer(**VQ_OPTIONS)
    trained_psnr = psnr(trained_vq.reconstruct(trained_vq.codes(held_out)), held_out)
    untrained_psnr = psnr(untrained.reconstruct(untrained.codes(held_out)), held_out)
    assert trained_psnr > VQ_PSNR_BAR > untrained_psnr


def test_trained_vq_uses_most_of_its_codebook(trained_vq, held_out):
    used, perplexity = code_usage(trained_vq.codes(held_out), trained_vq.num_codes)
    assert used >= 0.75 and perplexity >= trained_vq.num_codes / 4


def test_vq_encode_is_the_nearest_code_of_each_cell_in_raster_order(trained_vq, held_out):
    image = held_out[0]
    with torch.no_grad():
        z = trained_vq.model.encoder(image[None].float() / 127.5 - 1)[0]
    codebook = trained_vq.model.quantizer.codebook
    expected = []
    for y in range(z.shape[1]):
        for x in range(z.shape[2]):
            distances = [((z[:, y, x] - code) ** 2).sum().item() for code in codebook]
            expected.append(distances.index(min(distances)))
    assert trained_vq.encode(image) == expected


def test_straight_through_gradients_reach_the_encoder():
    tokenizer = VQTokenizer(**VQ_OPTIONS)
    images = load_digits_images(8, "test")[0][:8].float() / 127.5 - 1
    reconstruction, _, _ = tokenizer.model.train()(images)
    F.mse_loss(reconstruction, images).backward()  # the commitment loss alone would reach the encoder anyway
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tokenizer.model.encoder.parameters())


def test_vq_saves_safetensors_and_json_only(trained_vq, held_out, tmp_path):
    trained_vq.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image_vq.json", "image_vq.safetensors"]
    loaded = VQTokenizer.load(tmp_path)
    ids = trained_vq.encode(held_out[1])
    assert torch.equal(loaded.decode(ids), trained_vq.decode(ids))
    (tmp_path / "image_vq.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="image_vq.safetensors"):
        VQTokenizer.load(tmp_path)


def test_vq_fit_is_quiet_and_checks_its_schedule(digits, capfd):
    tokenizer = VQTokenizer(**VQ_OPTIONS)
    tokenizer.fit(digits[:16], steps=1, batch_size=8)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert not tokenizer.model.training
    with pytest.raises(ValueError, match="exactly one of steps or epochs"):
        tokenizer.fit(digits[:16], steps=1, epochs=1)


def test_vq_rejects_a_size_the_downsampling_does_not_divide():
    with pytest.raises(ValueError, match="divisible by downsample=4"):
        VQTokenizer(size=10, downsample=4)
    with pytest.raises(ValueError, match="power of two"):
        VQTokenizer(size=12, downsample=3)


# --- bench/digit_classes.py: the evidence for class conditioning ------------------------------------
@contextmanager
def single_threaded():
    """Token-by-token generation with a tiny model and a small logistic regression run fastest on one thread
    (torch and BLAS), also on a busy machine."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    with single_threaded():
        yield


@pytest.fixture(scope="module")
def digit_classifier(conditional):
    from bench.digit_classes import train_classifier

    with single_threaded():
        return train_classifier(conditional)


@pytest.fixture(scope="module")
def untrained_conditional_model(conditional) -> armm.Transformer:
    torch.manual_seed(0)
    config = armm.ModelConfig.from_name("gpt2-tiny", vocab_size=conditional.vocab_size, max_seq_len=67)
    return armm.Transformer(config).eval()


def test_the_classifier_scores_real_test_digits_with_its_own_accuracy(conditional, digit_classifier):
    from bench.digit_classes import assigned_fractions

    images, labels = load_digits_images(8, "test")
    overall, per_class = assigned_fractions(digit_classifier, conditional, images, labels, 10)
    quantised = (images.long() >> 4 << 4) + 8  # 4-bit bin centres, written out
    expected = (digit_classifier.predict(quantised.flatten(1).numpy() / 255) == labels.numpy()).mean()
    assert overall == pytest.approx(expected) and overall > 0.9
    counts = torch.bincount(labels, minlength=10).tolist()
    assert sum(f * n for f, n in zip(per_class, counts)) / sum(counts) == pytest.approx(overall)


@pytest.mark.usefixtures("one_thread")
def test_samples_of_each_class_start_from_its_class_token(conditional, untrained_conditional_model):
    from bench.digit_classes import sample_classes

    model = untrained_conditional_model
    images, labels = sample_classes(model, conditional, 3, "temperature=1.0", seed=5)
    assert images.shape == (30, 1, 8, 8) and images.dtype == torch.uint8
    assert labels.tolist() == [label for label in range(10) for _ in range(3)]
    prompt = [conditional.bos_id, conditional.class_id(4)]
    [new] = armm.generate(model, [prompt], max_new_tokens=65, sampler="temperature=1.0",
                          stop_tokens=[conditional.eos_id], seed=5 + 4 * 3 + 1)
    assert torch.equal(images[13], conditional.decode(prompt + new))
    with pytest.raises(ValueError, match="no classes"):
        sample_classes(model, PixelTokenizer(size=8, channels=1, bits=4), 1, "temperature=1.0", seed=0)


@pytest.mark.usefixtures("one_thread")
def test_the_bench_reports_fractions_and_writes_a_grid(conditional, untrained_conditional_model, tmp_path, capsys):
    from bench.digit_classes import main

    armm.save_model(tmp_path / "model", untrained_conditional_model, conditional)
    main([str(tmp_path / "model"), "--samples-per-class", "2", "--grid", str(tmp_path / "grid.png"),
          "--grid-columns", "2", "--grid-scale", "3"])
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    fractions = [float(row[3].strip(" *")) for row in rows[1:]]
    assert [row[1].strip() for row in rows[1:]] == [*map(str, range(10)), "all"]
    assert all(0 <= fraction <= 1 for fraction in fractions)
    assert fractions[-1] == pytest.approx(sum(fractions[:-1]) / 10, abs=0.01)
    tile = 8 * 3 + 2
    assert read_png(tmp_path / "grid.png").shape == (1, 10 * tile + 2, 2 * tile + 2)
