"""The armm command line, run in-process through its entry point."""

import pytest

import armm
from armm.cli import main


@pytest.fixture
def model_dir(tmp_path):
    main(["init", str(tmp_path / "m"), "--preset", "gpt2-tiny", "--seed", "0"])
    return tmp_path / "m"


def test_init_writes_a_loadable_model_with_the_tokenizer_vocabulary(model_dir):
    model, tokenizer = armm.load_model(model_dir)
    assert model.config.vocab_size == tokenizer.vocab_size == 259


def test_init_fits_a_trainable_tokenizer_on_data_first(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat. " * 200)
    main(["init", str(tmp_path / "m"), "--preset", "gpt2-tiny", "--tokenizer", "text-bpe", "--data",
          str(tmp_path / "corpus.txt")])
    model, tok = armm.load_model(tmp_path / "m")
    assert tok.name == "text-bpe" and model.config.vocab_size == tok.vocab_size < 300
    assert len(tok.encode("the cat sat on the mat.")) < 10  # merges were learned from the corpus


def test_sample_prints_the_prompt_and_the_generated_continuation(model_dir, capsys):
    main(["sample", str(model_dir), "--prompt", "Hello", "--max-new-tokens", "12"])
    out = capsys.readouterr().out
    model, tok = armm.load_model(model_dir)
    expected = tok.decode(armm.generate(model, [[tok.bos_id, *tok.encode("Hello")]], max_new_tokens=12,
                                        stop_tokens=[tok.eos_id])[0])
    assert out == "Hello" + expected + "\n"


def test_streamed_and_seeded_samples_are_reproducible(model_dir, capsys):
    args = ["sample", str(model_dir), "--prompt", "ab", "--sampler", "temperature=0.9,top_k=50", "--seed", "5",
            "--max_new_tokens", "10"]
    main(args)
    plain = capsys.readouterr().out
    main(args + ["--stream"])
    assert capsys.readouterr().out == plain
    main(args + ["--num-samples", "2"])
    out = capsys.readouterr().out
    assert plain.strip() in out and "sample 1" in out


def test_a_vanishing_temperature_samples_what_greedy_does(model_dir, capsys):
    """temperature=1e-300 overflowed the logits to NaN and printed token 0 over and over; its limit is greedy."""
    main(["sample", str(model_dir), "--prompt", "ab", "--max-new-tokens", "16", "--sampler", "greedy"])
    greedy = capsys.readouterr().out
    main(["sample", str(model_dir), "--prompt", "ab", "--max-new-tokens", "16", "--sampler", "temperature=1e-300",
          "--seed", "1"])
    assert capsys.readouterr().out == greedy


def test_every_backend_samples_what_eager_decoding_does(model_dir, capsys):
    args = ["sample", str(model_dir), "--prompt", "Hi", "--max-new-tokens", "8"]
    main(args + ["--backend", "eager"])
    eager = capsys.readouterr().out
    for backend in ("auto", "native", "compiled"):
        main(args + ["--backend", backend])
        assert capsys.readouterr().out == eager, backend
    main(args + ["--quantize", "int8"])
    assert "Hi" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(args + ["--backend", "fast"])


def test_score_reports_the_chain_rule_metrics(model_dir, capsys, tmp_path):
    (tmp_path / "t.txt").write_text("hello world")
    main(["score", str(model_dir), "--file", str(tmp_path / "t.txt")])
    out = capsys.readouterr().out
    model, tok = armm.load_model(model_dir)
    result = armm.score(model, [tok.bos_id, *tok.encode("hello world")])
    assert f"{result.perplexity:.4f}" in out and f"{result.bits_per_token:.4f}" in out
    assert "tokens scored" in out and " 11 " in out
    assert f"{result.bits_per_unit(len('hello world')):.4f}" in out and "bits per byte" in out


def test_sample_writes_files_in_the_modality_format(model_dir, capsys, tmp_path):
    main(["sample", str(model_dir), "--prompt", "Hi", "--num-samples", "2", "--seed", "0",
          "--sampler", "temperature=1", "--output", str(tmp_path / "out" / "s.txt"), "--max-new-tokens", "5"])
    written = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in written] == ["s-0.txt", "s-1.txt"]
    assert all(p.read_text().startswith("Hi") for p in written)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "{dir}", "--sampler", "top_p=1.5"], "top_p must be in (0, 1]"),
        (["sample", "{dir}", "--sampler", "nucleus=0.9"], "unknown sampler 'nucleus'"),
        (["sample", "{dir}", "--prompt", "x" * 300], "more than the model's context allows"),
        (["sample", "{dir}", "--past-context", "rolling"], "needs RoPE positions"),
        (["sample", "{dir}/missing"], "does not exist"),
        (["score", "{dir}"], "exactly one of --text or --file"),
        (["init", "{dir}/new", "--tokenizer", "klingon"], "unknown tokenizer 'klingon'"),
        (["init", "{dir}/new", "--preset", "gpt5"], "unknown model preset 'gpt5'"),
    ],
)
def test_user_mistakes_exit_non_zero_with_one_clear_line(model_dir, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(dir=model_dir) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.fixture
def mixed_model_dir(tmp_path):
    """A random model over a text + 2x2 image layout."""
    from armm_image import PixelTokenizer

    from armm.layout import VocabLayout

    layout = VocabLayout({"text": armm.ByteTokenizer(), "image": PixelTokenizer(size=2, channels=1, bits=4)})
    model = armm.Transformer(armm.ModelConfig.from_name("gpt2-tiny", vocab_size=layout.vocab_size, max_seq_len=64))
    return armm.save_model(tmp_path / "mixed", model, layout)


def test_sample_from_a_mixed_model_keeps_to_spans_with_guidance_and_per_part_samplers(mixed_model_dir, tmp_path):
    import torch

    args = ["sample", str(mixed_model_dir), "--prompt", "a two", "--num-samples", "3", "--seed", "0",
            "--sampler", "temperature=1", "--part-samplers", '{"image": "top_k=3"}', "--max-new-tokens", "40",
            "--guidance", "3", "--guidance-tokens", "2", "--output", str(tmp_path / "out" / "s.jsonl")]
    main(args)
    _, layout = armm.load_model(mixed_model_dir)
    samples = layout.read(tmp_path / "out" / "s.jsonl")  # the manifest: text inline, images as PNG files beside it
    assert len(samples) == 3 and all(sample[0] == ("text", "a two") for sample in samples)
    for sample in samples:  # whatever the random model drew after the prompt, the span constraint kept it whole
        assert all(part.sample.shape == torch.Size([1, 2, 2]) for part in sample if part.name == "image")
    main(args[:-1] + [str(tmp_path / "again" / "s.jsonl")])  # seeded: the same samples again
    again = layout.read(tmp_path / "again" / "s.jsonl")
    assert [[(p.name, p.sample if isinstance(p.sample, str) else p.sample.tolist()) for p in s] for s in samples] == \
        [[(p.name, p.sample if isinstance(p.sample, str) else p.sample.tolist()) for p in s] for s in again]


@pytest.mark.parametrize("args, message", [
    (["--guidance", "2"], "--guidance needs a mixed-modality model"),
    (["--part-samplers", '{"image": "top_k=2"}'], "per-part samplers need a mixed layout"),
])
def test_mixed_modality_options_on_a_text_model_are_refused(model_dir, capsys, args, message):
    with pytest.raises(SystemExit):
        main(["sample", str(model_dir), *args])
    assert message in capsys.readouterr().err
