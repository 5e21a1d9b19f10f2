"""The catalog of methods: a recipe loads without any method's code, and every entry points at real code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.config.loading import recipe_json_schema
from edgekd.config.train import TrainConfig
from edgekd.distill.base import Distiller
from edgekd.distill.catalog import CATALOG, METHODS, MethodEntry, by_name
from edgekd.distill.plan import Stage
from edgekd.distill.registry import get_method, implements, method_names
from edgekd.schema_base import Section

ROOT = Path(__file__).resolve().parents[1]


def modules_after_loading_a_recipe() -> set[str]:
    """The modules a fresh interpreter holds after loading the quickstart recipe (a fresh one: this test
    process has imported torch and every method already)."""
    code = (
        "import json, sys\n"
        "from edgekd.config.loading import load_recipe\n"
        "load_recipe('recipes/quickstart.yaml')\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600, check=True
    )
    return set(json.loads(result.stdout))


def test_loading_a_recipe_imports_no_method_code():
    modules = modules_after_loading_a_recipe()
    assert "edgekd.distill.catalog" in modules  # the recipe's distill section did come from the catalog
    loaded = sorted(
        m for m in modules if m == "edgekd.distill.base" or m.startswith("edgekd.distill.methods")
    )
    assert loaded == []


def test_loading_a_recipe_imports_no_torch():
    assert "torch" not in modules_after_loading_a_recipe()


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_entry_loads_its_code_and_plan(name):
    entry = get_method(name)
    assert entry is CATALOG[name] and issubclass(entry.options, Section)
    assert issubclass(entry.distiller, Distiller)
    assert entry.distiller.__module__ == entry.module
    stages = entry.plan(entry.options(), TrainConfig())
    assert stages and all(isinstance(s, Stage) and issubclass(s.objective, Distiller) for s in stages)
    assert entry.supported_relations(entry.options()) <= {"same", "subset", "disjoint"}


def test_schema_lists_every_entry_with_its_options():
    distill = recipe_json_schema()["$defs"]["DistillConfig"]["properties"]
    assert set(method_names()) == set(CATALOG) <= set(distill)
    for entry in METHODS:
        assert distill[entry.name]["description"] == entry.summary


def test_a_method_file_and_the_catalog_that_disagree_fail_loudly():
    class KD(Distiller):  # the right name, in the wrong module
        pass

    with pytest.raises(
        ImportError, match=re.escape("'kd', but catalog.py points it at edgekd.distill.methods.kd.KD")
    ):
        implements("kd")(KD)
    with pytest.raises(ImportError, match=re.escape("'nope', which catalog.py does not declare")):
        implements("nope")(KD)

    renamed = MethodEntry("kd", CATALOG["kd"].options, "", "edgekd.distill.methods.kd", "HintonKD")
    with pytest.raises(
        ImportError, match=re.escape("names edgekd.distill.methods.kd.HintonKD, which does not exist")
    ):
        _ = renamed.distiller
    no_plan = MethodEntry("kd", CATALOG["kd"].options, "", "edgekd.distill.methods.kd", "KD", "kd_plan")
    with pytest.raises(ImportError, match="kd_plan"):
        no_plan.plan(no_plan.options(), TrainConfig())


def test_a_name_declared_twice_is_refused():
    with pytest.raises(ValueError, match="'kd' is declared twice"):
        by_name((CATALOG["kd"], CATALOG["kd"]))


def test_every_methods_options_survive_the_stored_recipes_json_round_trip():
    """A run folder stores its recipe as JSON-like YAML and --resume validates it again: an options type that
    JSON cannot carry (a tuple) would make every resumed run look changed."""
    from edgekd.distill.catalog import METHODS

    for entry in METHODS:
        options = entry.options()
        assert entry.options.model_validate(options.model_dump(mode="json")) == options, entry.name
