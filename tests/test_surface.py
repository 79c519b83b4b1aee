"""The user's surface agrees with itself: docs vs click options, --set, ignored options, layers.

Cheap checks (no cluster): they parse docs/training.md, the click definitions, metadask.yaml
and pyproject.toml's import contract.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import click
import dask.config
import pytest
from click.testing import CliRunner

from metadask.cli import TRAIN_SECTIONS, _with_settings, train
from metadask.config import TrainConfig, parse_settings, setting, setting_keys
from metadask.errors import ConfigError
from metadask.strategies.base import Strategy, ignored_options
from metadask.strategies.registry import get_strategy

ROOT = Path(__file__).resolve().parents[1]


def _docs_sections(path: Path, heading: str) -> dict[str, list[list[str]]]:
    """``### title`` -> first cells of the table rows under it, within the ``## heading`` section."""
    text = path.read_text()
    body = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    sections: dict[str, list[list[str]]] = {}
    title = ""
    for line in body.splitlines():
        if line.startswith("### "):
            title = line[4:].strip()
            sections[title] = []
        elif line.startswith("| ") and not line.startswith(("| option |", "| setting |")) and title:
            sections[title].append(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return sections


def _param_of(flag: str) -> str:
    for p in train.params:
        if flag in (*p.opts, *getattr(p, "secondary_opts", ())):
            return str(p.name)
    raise AssertionError(f"docs/training.md lists {flag}, which `metadask train` does not have")


def test_the_docs_option_tables_name_exactly_the_train_options_in_the_help_sections():
    documented = {title: cells for title, cells in _docs_sections(ROOT / "docs" / "training.md", "Options").items()
                  if not title.startswith("Settings")}
    assert list(documented) == [title for title, _ in TRAIN_SECTIONS]
    for title, names in TRAIN_SECTIONS:
        flags = [f for cell in documented[title] for token in cell for f in token.split(" / ") if f.startswith("-")]
        assert sorted({_param_of(f) for f in flags}) == sorted(n for n in names if n != "help"), title


def test_the_train_commands_defaults_are_the_libraries():
    """``metadask train`` and ``metadask.train`` / ``TrainConfig`` default to the same values.

    The CLI keeps its defaults literal (importing the config costs dask's import at every
    ``metadask --help``), so a changed library default must change here too.
    """
    library = TrainConfig()
    unset = (None, False, ())
    compared = 0
    for p in train.params:
        if p.name in TrainConfig.__dataclass_fields__ and isinstance(p.default, (int, float, str)) \
                and not isinstance(p.default, bool):
            assert p.default == getattr(library, p.name), f"--{p.name.replace('_', '-')}: CLI {p.default!r}, library {getattr(library, p.name)!r}"
            compared += 1
        elif p.name in TrainConfig.__dataclass_fields__ and p.default is None:
            assert getattr(library, p.name) in unset, p.name
    assert compared >= 20


def test_every_train_option_is_in_exactly_one_help_section():
    placed = [n for _, names in TRAIN_SECTIONS for n in names]
    assert len(placed) == len(set(placed))
    assert {p.name for p in train.params} | {"help"} == set(placed)


def test_the_docs_settings_table_names_every_setting_of_metadask_yaml():
    sections = _docs_sections(ROOT / "docs" / "training.md", "Options")
    rows = next(cells for title, cells in sections.items() if title.startswith("Settings"))
    assert [cell[0] for cell in rows] == setting_keys()


def test_debug_is_a_group_option_and_not_a_train_option():
    assert not any("--debug" in p.opts for p in train.params)


def test_set_values_are_read_as_yaml_and_unknown_keys_list_the_known_ones():
    assert parse_settings(["incremental.epochs=3", "metadask.distributed.fit_timeout=null", "worker-env.FOO=1"]) == {
        "metadask.incremental.epochs": 3, "metadask.distributed.fit-timeout": None, "metadask.worker-env.FOO": "1"}
    with pytest.raises(ConfigError, match=r"--set epochs: no such setting\. Known settings: .*incremental\.epochs"):
        parse_settings(["epochs=3"])
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        parse_settings(["incremental.epochs"])


def test_set_applies_through_dask_config_for_the_command_only():
    @click.command()
    @_with_settings
    def show() -> None:
        click.echo(f"{setting('incremental.epochs')} {setting('ensemble-cv-members')}")

    out = CliRunner().invoke(show, ["--set", "incremental.epochs=4", "--set", "ensemble-cv-members=0"])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == "4 0"
    assert setting("incremental.epochs") == 10


def test_screening_from_accepts_a_run_directory(tmp_path):
    ctx = train.make_context("train", ["--dataset", "d", "--out-dir", str(tmp_path / "o"), "--screening-from", str(tmp_path)])
    assert ctx.params["screening_from"] == str(tmp_path)


@pytest.mark.parametrize(("strategy", "options", "ignored"), [
    ("single", {"ensemble_cv": "full"}, ["--ensemble-cv"]),
    ("single", {"n_estimators": 100, "max_genes_per_batch": 50}, ["--max-genes-per-batch"]),
    ("batch-ensemble", {"ensemble_cv": "full", "n_estimators": 100}, []),
    ("distributed", {"ensemble_method": "voting"}, ["--ensemble-method"]),
    ("incremental", {"n_estimators": 100, "learning_rate": 0.3}, ["--learning-rate", "--n-estimators"]),
    ("single", {"final_model": "cv-ensemble"}, []),
    ("batch-ensemble", {"final_model": "cv-ensemble", "ensemble_cv": "full"}, []),
    ("distributed", {"final_model": "cv-ensemble"}, ["--final-model"]),
    ("incremental", {"final_model": "cv-ensemble"}, ["--final-model"]),
])
def test_options_a_strategy_does_not_read_are_reported(strategy, options, ignored):
    assert ignored_options(TrainConfig(**options), get_strategy(strategy)) == ignored


def test_a_strategys_settings_given_to_another_strategy_are_reported():
    with dask.config.set({"metadask.incremental.epochs": 3, "metadask.ensemble-cv-members": 2}):
        assert ignored_options(TrainConfig(), get_strategy("single")) == ["--set ensemble-cv-members", "--set incremental.*"]
        assert ignored_options(TrainConfig(), get_strategy("incremental")) == ["--set ensemble-cv-members"]


def test_a_strategy_that_does_not_declare_its_options_reads_them_all():
    class Custom(Strategy):
        name = "custom-reads-all"

        def fit(self, ctx):  # pragma: no cover - never run
            raise NotImplementedError

    assert ignored_options(TrainConfig(ensemble_cv="full", n_estimators=3), Custom) == []


def test_every_top_level_module_of_metadask_is_in_a_layer_of_the_import_contract():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    named = {m.strip() for layer in layers for m in re.split(r"[|:]", layer)}
    package = ROOT / "metadask"
    modules = {f"metadask.{p.stem}" for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")}
    modules |= {f"metadask.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert modules - named == set(), "add these modules to a layer in pyproject.toml (docs/architecture.md)"
