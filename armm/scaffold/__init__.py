"""``armm new-plugin NAME``: a new plugin package rendered from the files in ``template/`` — a working tokenizer over a
declared symbol set, the hooks registering it and a sample dataset, the contract tests, a recipe and a README."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path

import jinja2
from rich.console import Console

import armm
from armm.outputs import check_new
from armm.plugins import ENTRY_POINT_GROUP, get_plugins

TEMPLATE = Path(__file__).with_name("template")
RENDERED = ".jinja"  # template files with this suffix are rendered with jinja2; others are copied as they are
PLACEHOLDER = "NAME"  # in template paths: the plugin's module name (src/armm_NAME → src/armm_demo)
VALID_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")


@dataclass(frozen=True)
class PluginNames:
    """Every name a plugin called ``name`` goes by."""

    name: str  # the folder, the tokenizer's registry name and the entry point's: chess-moves

    @property
    def module(self) -> str:
        return self.name.replace("-", "_")  # chess_moves

    @property
    def package(self) -> str:
        return f"armm_{self.module}"  # armm_chess_moves

    @property
    def distribution(self) -> str:
        return f"armm-{self.name.replace('_', '-')}"  # armm-chess-moves

    @property
    def class_name(self) -> str:
        return "".join(part.capitalize() for part in self.module.split("_")) + "Tokenizer"  # ChessMovesTokenizer

    @property
    def dataset(self) -> str:
        return f"{self.name}-sample"


def plugin_names(name: str) -> PluginNames:
    """The names of a plugin called ``name``: a ValueError unless it is lower-case letters, digits, dashes and
    underscores, starting with a letter (so that, dashes made underscores, it is a Python identifier)."""
    if not VALID_NAME.fullmatch(name):
        raise ValueError(f"plugin name {name!r} is not usable: use lower-case letters, digits and single dashes or "
                         "underscores, starting with a letter (e.g. chess-moves)")
    return PluginNames(name)


def check_unclaimed(names: PluginNames) -> None:
    """Raise ValueError when an installed distribution other than the plugin's own already uses its entry-point,
    tokenizer or dataset name: armm would refuse the duplicate name, or pluggy skip the entry point."""
    plugins = get_plugins()
    claims = [(f"entry point {point.name!r} of the {ENTRY_POINT_GROUP} group", f"{point.dist.name} {point.dist.version}")
              for point in entry_points(group=ENTRY_POINT_GROUP) if point.name == names.name and point.dist]
    claims += [(f"{registry.kind} {entry.name!r}", entry.provider) for registry, name in
               ((plugins.tokenizers, names.name), (plugins.datasets, names.dataset)) for entry in registry
               if entry.name == name]
    for what, provider in claims:
        if _normalised(provider.split()[0]) != names.distribution:
            raise ValueError(f"the {what} is taken by {provider}: choose another plugin name")


def _normalised(distribution: str) -> str:
    """A distribution's name as pip compares them (PEP 503): ``Armm_DNA`` is ``armm-dna``."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def render(names: PluginNames) -> dict[Path, str]:
    """The package's files, relative path → text: the template tree rendered for ``names``."""
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE), keep_trailing_newline=True,
                                     undefined=jinja2.StrictUndefined, autoescape=False)
    values = {"name": names.name, "module": names.module, "package": names.package, "dataset": names.dataset,
              "distribution": names.distribution, "class_name": names.class_name, "armm_version": _armm_version()}
    files = {}
    for path in sorted(p for p in TEMPLATE.rglob("*") if p.is_file()):
        relative = path.relative_to(TEMPLATE).as_posix()
        target = Path(relative.removesuffix(RENDERED).replace(PLACEHOLDER, names.module))
        rendered = relative.endswith(RENDERED)
        files[target] = environment.get_template(relative).render(values) if rendered else path.read_text("utf-8")
    return files


def _armm_version() -> str:
    try:
        return version("armm")
    except PackageNotFoundError:  # armm run from a source tree
        return armm.__version__


def write_plugin(names: PluginNames, directory: Path, overwrite: bool = False) -> Path:
    """Write the package of the plugin ``names`` into ``directory/NAME``; returns that folder. Refused when the
    folder exists (unless ``overwrite``: the package's files are replaced, any other file is kept)."""
    folder = Path(directory) / names.name
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder: choose another plugin name or --directory")
    check_new([folder], overwrite)
    check_unclaimed(names)
    files = render(names)  # everything rendered before anything is written
    for relative, text in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text, encoding="utf-8")
    return folder


def new_plugin(name: str, directory: Path = Path("."), overwrite: bool = False) -> None:
    """Start a plugin package: a working tokenizer over a declared symbol set, its tests, a recipe and a README.

    Args:
        name: The plugin's name (lower-case letters, digits, dashes): its folder, its tokenizer's registry name
            (`data.tokenizer: NAME`) and its Python package, armm_NAME (dashes made underscores).
        directory: Where to create the folder NAME.
        overwrite: Write into NAME although it exists, replacing the files this command writes (others are kept).
    """
    names = plugin_names(name)
    folder = write_plugin(names, directory, overwrite)
    Console().print(
        f"wrote {folder}/: the package {names.distribution} (tokenizer {names.name}, dataset {names.dataset}). Next:\n"
        f'  pip install -e "{folder}[dev]"\n  pytest {folder}\n  cd {folder} && armm fit -c {names.module}.yaml\n'
        f"then make {folder}/src/{names.package}/tokenizer.py your domain's (see {folder}/README.md)",
        markup=False, highlight=False, soft_wrap=True)
