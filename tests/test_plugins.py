"""Plugin discovery through the armm.plugins entry-point group, using real (temporary) distributions on sys.path.

The fake plugins register names no real plugin claims (`fake-dna`, not the tutorial's `dna`), so these tests hold
whatever other armm plugins are installed.
"""

import textwrap

import pytest

import armm
from armm.cli import main
from armm.plugins import DISABLE_AUTOLOAD_ENV, Plugins, make_plugin_manager
from armm.registry import PluginError

PLUGIN_SOURCE = '''
import armm
from armm.tokenizer import ByteTokenizer


class {cls}(ByteTokenizer):
    name = "{tokenizer}"
    modality = "text"


class Shout:
    def __call__(self, logits, tokens):
        return logits * 2


@armm.hookimpl
def armm_register_tokenizers(register):
    register("{tokenizer}", {cls})


@armm.hookimpl
def armm_register_samplers(register):
    register("{sampler}", Shout)
'''


def install_fake_distribution(root, dist_name, module, tokenizer, sampler):
    """Write a module and its .dist-info (METADATA + entry_points.txt) under ``root``, as pip would."""
    (root / f"{module}.py").write_text(PLUGIN_SOURCE.format(cls=module.title(), tokenizer=tokenizer, sampler=sampler))
    info = root / f"{dist_name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[armm.plugins]\n{module} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    armm.get_plugins.cache_clear()
    yield tmp_path
    armm.get_plugins.cache_clear()


def test_a_plugin_is_found_through_its_entry_point_with_its_provider(site):
    install_fake_distribution(site, "armm-fake", "armm_fake_plugin", "fake-dna", "fake_shout")
    plugins = armm.get_plugins()
    assert plugins.tokenizers.get("fake-dna").name == "fake-dna"
    providers = {entry.name: entry.provider for entry in plugins.samplers}
    assert providers["fake_shout"] == "armm-fake 1.0"
    assert providers["greedy"] == "armm (built-in)"
    sampler = armm.build_sampler("fake_shout,top_k=1")
    assert [type(t).__name__ for t in sampler.transforms] == ["Shout", "TopK"]


def test_two_distributions_claiming_one_name_are_refused_naming_both(site):
    install_fake_distribution(site, "armm-first", "armm_first_plugin", "fake-dna", "fake_shout_a")
    install_fake_distribution(site, "armm-second", "armm_second_plugin", "fake-dna", "fake_shout_b")
    twice = r"tokenizer 'fake-dna' is registered twice: by armm-\w+ 1.0 and by armm-\w+ 1.0"
    with pytest.raises(PluginError, match=twice):
        armm.get_plugins()


def test_a_plugin_cannot_shadow_a_builtin_sampler(site):
    install_fake_distribution(site, "armm-rogue", "armm_rogue_plugin", "fake-dna-2", "greedy")
    with pytest.raises(PluginError, match=r"sampler 'greedy' is registered twice: by armm \(built-in\) and by armm-rogue 1.0"):
        armm.get_plugins()


def test_autoloading_can_be_switched_off(site, monkeypatch):
    install_fake_distribution(site, "armm-fake", "armm_fake_plugin", "fake-dna", "fake_shout")
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    plugins = Plugins.from_manager(make_plugin_manager())
    assert "fake-dna" not in plugins.tokenizers and "greedy" in plugins.samplers
    assert "fake-dna" in Plugins.from_manager(make_plugin_manager(autoload=True)).tokenizers


def test_a_hook_implementation_may_take_fewer_arguments(site):
    (site / "armm_quiet_plugin.py").write_text(textwrap.dedent('''
        import armm
        CALLED = []

        @armm.hookimpl
        def armm_register_samplers():
            CALLED.append(True)
    '''))
    info = site / "armm_quiet-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: armm-quiet\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[armm.plugins]\nquiet = armm_quiet_plugin\n")
    armm.get_plugins()
    import armm_quiet_plugin

    assert armm_quiet_plugin.CALLED == [True]


def test_unknown_tokenizer_names_the_available_ones(site):
    with pytest.raises(ValueError, match="unknown tokenizer 'klingon'; available: .*bytes"):
        armm.get_plugins().tokenizers.get("klingon")


def test_armm_plugins_lists_every_tokenizer_and_sampler_with_its_provider(site, capsys):
    install_fake_distribution(site, "armm-fake", "armm_fake_plugin", "fake-dna", "fake_shout")
    main(["plugins"])
    lines = capsys.readouterr().out.splitlines()
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if line.count("│") == 4]
    assert ["tokenizer", "fake-dna", "armm-fake 1.0"] in rows
    assert ["tokenizer", "bytes", "armm (built-in)"] in rows
    assert ["sampler", "fake_shout", "armm-fake 1.0"] in rows
    for name in ("greedy", "temperature", "top_k", "top_p", "min_p", "typical", "repetition_penalty",
                 "frequency_penalty", "presence_penalty", "no_repeat_ngram"):
        assert ["sampler", name, "armm (built-in)"] in rows
