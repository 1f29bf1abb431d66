"""armm.inspect computes what the model really computes; the plots and the CLI draw and print it."""

import subprocess
import sys

import pytest
import torch
from PIL import Image

import armm
from armm.cli import main
from armm.inspect import (
    attention, capture_attention, generation_steps, next_token, prompt_ids, surprise, text_pieces, token_label,
)
from armm.layout import VocabLayout
from tests.conftest import tiny_model

TOK = armm.ByteTokenizer()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ids_of(text: str) -> list[int]:
    return [TOK.bos_id, *TOK.encode(text)]


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    return tiny_model("gpt2-tiny", vocab_size=TOK.vocab_size)


# --- next token ----------------------------------------------------------------------------------------
def test_next_token_gives_the_model_softmax_and_the_sampler_chains_distribution(gpt2):
    ids = ids_of("The quick brown")
    result = next_token(gpt2, TOK, ids, sampler="temperature=0.7,top_k=5", top=8)
    with torch.no_grad():
        logits = gpt2(torch.tensor([ids]))[0, -1]
    torch.testing.assert_close(result.p_before, logits.softmax(-1), rtol=0, atol=1e-7)
    scaled = logits / 0.7  # the chain, computed independently: temperature, then keep the 5 largest
    kept = scaled.topk(5).indices
    expected = torch.zeros_like(scaled).index_put((kept,), scaled[kept].softmax(-1))
    torch.testing.assert_close(result.p_after, expected, rtol=0, atol=1e-6)
    assert result.kept == 5 and [c.id for c in result.top[:5]] == scaled.topk(5).indices.tolist()
    assert [c.p_after for c in result.top[5:]] == [0.0] * 3  # then the rest, by the model's probability
    assert all(c.p_before == pytest.approx(float(result.p_before[c.id])) for c in result.top)
    assert result.entropy_after < result.entropy_before
    plain = next_token(gpt2, TOK, ids)  # default: temperature=1, the model's own distribution
    torch.testing.assert_close(plain.p_after, plain.p_before)


def test_next_token_keeps_a_mixed_layout_inside_its_grammar():
    layout = VocabLayout({"text": armm.ByteTokenizer(), "protein": {"tokenizer": "protein"}})
    model = tiny_model("gpt2-tiny", vocab_size=layout.vocab_size)
    ids = [layout.bos_id, *layout.encode_part("protein", "MKV", close=False)]
    result = next_token(model, layout, ids)
    allowed = layout.allowed(torch.tensor([ids]))[0]
    assert bool((result.p_after[~allowed] == 0).all()) and result.p_after.sum().item() == pytest.approx(1)
    assert token_label(layout, ids[1]) == "<|protein|>" and token_label(layout, ids[2]) == "M (Met)"
    assert token_label(layout, layout.span("text").offset + ord("a")) == "a"


# --- attention -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])  # learned positions / RoPE with GQA heads
def test_attention_maps_are_causal_distributions_that_reproduce_the_module_output(preset):
    model = tiny_model(preset, vocab_size=TOK.vocab_size)
    ids = torch.tensor([ids_of("attention is all"), ids_of("you need, maybe!")])
    for block, layer in zip(model.blocks, capture_attention(model, ids)):
        B, H, T, _ = layer.probs.shape
        assert (B, H, T) == (2, model.config.n_head, ids.size(1))
        assert bool((layer.probs.triu(1) == 0).all())  # exactly zero above the diagonal
        torch.testing.assert_close(layer.probs.sum(-1), torch.ones(B, H, T))
        with torch.no_grad():
            rebuilt = block.attn.proj((layer.probs @ layer.values).transpose(1, 2).reshape(B, T, -1))
        torch.testing.assert_close(rebuilt, layer.output, rtol=1e-5, atol=1e-5)
    full = attention(model, ids[0])
    assert full.probs.shape == (2, 4, ids.size(1), ids.size(1))
    one = attention(model, ids[0], layer=-1, head=3, tokenizer=TOK)
    assert one.layers == [1] and one.heads == [3] and one.labels[:3] == ["<bos>", "a", "t"]
    torch.testing.assert_close(one.map(1, 3), full.map(1, 3))
    with pytest.raises(ValueError, match=r"layer 2 does not exist: the model has 2 layers \(0 .. 1\)"):
        attention(model, ids[0], layer=2)
    with pytest.raises(ValueError, match="head 4 does not exist"):
        attention(model, ids[0], head=4)


# --- surprise ------------------------------------------------------------------------------------------
def test_surprise_sums_to_the_sequence_log_likelihood_of_armm_score(gpt2):
    text = 'naïve <b>"x"</b>\n\tdone'
    ids = ids_of(text)
    result = surprise(gpt2, TOK, ids, num_units=TOK.num_units(text))
    reference = armm.score(gpt2, ids)
    assert result.log_likelihood == reference.log_likelihood
    assert float(result.token_logprobs.double().sum()) == reference.log_likelihood
    with torch.no_grad():
        independent = gpt2(torch.tensor([ids[:-1]]))[0].log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])
    torch.testing.assert_close(result.token_logprobs, independent[:, 0])
    assert result.perplexity == pytest.approx(reference.perplexity)
    assert result.bits_per_unit == pytest.approx(reference.bits_per_unit(len(text.encode())))
    assert "".join(p for p in result.texts if p) == text and result.texts[0] is None  # bos is the condition
    with pytest.raises(ValueError, match="at least 2 tokens"):
        surprise(gpt2, TOK, [TOK.bos_id])


# --- generation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler, seed", [("greedy", None), ("temperature=0.9,top_k=20", 3), ("top_p=0.8", 11)])
def test_generation_steps_draw_what_generate_draws(gpt2, sampler, seed):
    ids = ids_of("Once upon")
    result = generation_steps(gpt2, TOK, ids, 6, sampler=sampler, top=4, seed=seed)
    expected = armm.generate(gpt2, [ids], max_new_tokens=6, sampler=sampler, seed=seed, stop_tokens=[TOK.eos_id])[0]
    assert result.tokens == expected
    for step in result.steps:
        assert step.context == ids + expected[:step.step]
        assert step.p_after > 0 and len(step.candidates) == 4
        direct = next_token(gpt2, TOK, step.context, sampler=sampler, top=4)
        assert [c.id for c in step.candidates] == [c.id for c in direct.top]
        assert step.p_after == pytest.approx(float(direct.p_after[step.token]), abs=1e-6)


# --- labels --------------------------------------------------------------------------------------------
def test_token_labels_are_readable_in_every_modality():
    assert [token_label(TOK, i) for i in (256, 257, 65, 32, 10, 9, 7, 0xC3)] == \
        ["<bos>", "<eos>", "A", "·", "⏎", "⇥", "\\x07", "\\xc3"]
    plugins = armm.get_plugins().tokenizers
    protein = plugins.get("protein")()
    assert token_label(protein, protein.encode("K")[0]) == "K (Lys)" and token_label(protein, protein.eos_id) == "<eos>"
    pixels = plugins.get("image-pixels")(size=4, channels=1, bits=4, num_classes=10)
    assert token_label(pixels, 7) == "level 7/15" and token_label(pixels, pixels.class_id(3)) == "class 3"
    audio = plugins.get("audio-mulaw")()
    name = token_label(audio, 131)
    amplitude = float(audio.decode([131])[0])
    assert name.startswith("μ-law 131 ≈ +") and float(name.split("≈")[1]) == pytest.approx(amplitude, rel=1e-2)

    class Opaque(armm.ByteTokenizer):  # a modality whose single id decodes to no text
        def decode(self, ids):
            return torch.tensor(ids)

    assert token_label(Opaque(), 65) == "#65" and token_label(TOK, 300) == "#300"
    assert text_pieces(TOK, ids_of("é!")) == [None, "", "é", "!"]


def test_an_empty_prompt_needs_a_bos_token():
    class NoBos(armm.ByteTokenizer):
        @property
        def special_tokens(self):
            return {"eos": 257}

    assert prompt_ids(TOK, "") == [TOK.bos_id]
    with pytest.raises(ValueError, match="no bos token, so an empty prompt has no tokens"):
        prompt_ids(NoBos(), "")


# --- the command line and the files it writes ----------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "m"
    main(["init", str(path), "--preset", "gpt2-tiny", "--seed", "0"])
    return path


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 0 and image.size[1] > 0


def test_inspect_next_prints_both_distributions_and_plots_them(model_dir, tmp_path, capsys):
    main(["inspect", "next", str(model_dir), "--prompt", "The [quick] $\\x$ brown", "--top", "4",
          "--sampler", "temperature=0.7,top_p=0.9", "--plot", str(tmp_path / "next.png")])
    out = capsys.readouterr().out
    model, tok = armm.load_model(model_dir)
    result = next_token(model, tok, ids_of("The [quick] $\\x$ brown"), sampler="temperature=0.7,top_p=0.9", top=4)
    assert "<bos>The·[quick]·$\\x$·brown" in out and "p after sampler" in out  # never rich markup, nor mathtext
    assert f"{result.top[0].p_before:.4f}" in out and f"{result.top[0].p_after:.4f}" in out
    assert_png(tmp_path / "next.png")


def test_inspect_attention_prints_a_heat_map_and_plots_one_head_or_all(model_dir, tmp_path, capsys):
    main(["inspect", "attention", str(model_dir), "--prompt", "Hi there", "--layer", "1", "--head", "0",
          "--plot", str(tmp_path / "one.png")])
    out = capsys.readouterr().out
    assert "layer 1, head 0" in out and "<bos> ██" in out  # bos can only attend to itself
    main(["inspect", "attention", str(model_dir), "--prompt", "Hi", "--plot", str(tmp_path / "grid.png")])
    out = capsys.readouterr().out
    assert "layer 0, head 0" in out and "layer 1, head 3" in out
    assert_png(tmp_path / "one.png")
    assert_png(tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as grid, Image.open(tmp_path / "one.png") as one:
        assert grid.size[0] > one.size[0]  # 4 heads a row


def test_inspect_surprise_colours_tokens_and_writes_png_and_escaped_html(model_dir, tmp_path, capsys):
    text = 'if a < b & c > "d":\n\treturn \'x\'\n'
    (tmp_path / "code.txt").write_text(text)
    main(["inspect", "surprise", str(model_dir), "--text", str(tmp_path / "code.txt"),
          "--plot", str(tmp_path / "s.png"), "--html", str(tmp_path / "out" / "s.html")])
    out = capsys.readouterr().out
    model, tok = armm.load_model(model_dir)
    reference = armm.score(model, ids_of(text))
    assert f"{reference.log_likelihood:.4f}" in out and f"{reference.perplexity:.4f}" in out
    assert f"{reference.bits_per_unit(len(text.encode())):.4f}" in out and "bits per byte" in out
    assert_png(tmp_path / "s.png")
    page = (tmp_path / "out" / "s.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "&lt;" in page and "&amp;" in page and "&quot;" in page and "&#x27;" in page
    body = page[page.index('<div class="text">'):page.index("</div>")]
    assert "<b" not in body and " & " not in body and body.count("<span") == len(text) + 1


@pytest.mark.parametrize("sampler, seed", [("greedy", None), ("temperature=0.8,top_k=40", 7)])
def test_inspect_generation_prints_a_table_per_step_with_the_drawn_token(model_dir, capsys, sampler, seed):
    args = ["inspect", "generation", str(model_dir), "--prompt", "ab", "--steps", "3", "--sampler", sampler,
            "--top", "259"]  # the whole vocabulary: the drawn token is always listed
    main(args + (["--seed", str(seed)] if seed is not None else []))
    out = capsys.readouterr().out
    model, tok = armm.load_model(model_dir)
    drawn = armm.generate(model, [ids_of("ab")], max_new_tokens=3, sampler=sampler, seed=seed,
                          stop_tokens=[tok.eos_id])[0]
    rows = [line.split("│") for line in out.splitlines() if "◀ drawn" in line]
    assert [int(row[2]) for row in rows] == drawn and out.count("step ") == len(drawn)
    assert "step 1 · context: <bos>ab" in out and "generated:" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["attention", "{dir}", "--prompt", "x", "--layer", "9"], "layer 9 does not exist: the model has 2 layers"),
        (["attention", "{dir}", "--prompt", "x", "--head", "-5"], "head -5 does not exist"),
        (["surprise", "{dir}", "--text", "{dir}/missing.txt"], "missing.txt does not exist"),
        (["surprise", "{dir}", "--text", "{dir}/model.safetensors"], "is not UTF-8 text"),
        (["surprise", "{dir}"], "give the file to score with --text FILE"),
        (["next", "{dir}", "--top", "0"], "top must be an integer >= 1"),
        (["next", "{dir}", "--sampler", "top_p=2"], "top_p must be in (0, 1]"),
        (["generation", "{dir}", "--steps", "500"], "more than the model's context"),
    ],
)
def test_inspect_errors_are_one_clear_line(model_dir, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", *(a.format(dir=model_dir) for a in args)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in " ".join(err.split()) and err.count("\n") == 1


def test_an_unreadable_text_file_is_one_error_line(model_dir, tmp_path, capsys, monkeypatch):
    def refuse(self, source):
        raise PermissionError(13, "Permission denied", str(source))

    monkeypatch.setattr(armm.ByteTokenizer, "read", refuse)
    with pytest.raises(SystemExit):
        main(["inspect", "surprise", str(model_dir), "--text", str(tmp_path / "secret.txt")])
    assert capsys.readouterr().err.startswith(f"error: cannot read {tmp_path / 'secret.txt'}: Permission denied")


def test_importing_the_cli_and_the_inspector_imports_no_plotting_library():
    code = "import sys, armm.cli, armm.inspect, armm.inspect.plots; print('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
