"""The workflow config and its JSON schema."""

from copy import deepcopy
from pathlib import Path

import pytest
import yaml

from pancreas_mtl.config import check_config, config_problems, load_schema
from pancreas_mtl.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="module")
def schema():
    return load_schema(SCHEMA_PATH)


@pytest.fixture
def shipped_config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_shipped_configs_are_valid(schema):
    for path in [REPO / "config" / "config.yaml", *sorted((REPO / ".test").glob("**/config*.yaml"))]:
        config = yaml.safe_load(path.read_text())
        assert config_problems(config, schema) == [], path


def _overlay(base: dict, overlay: dict) -> dict:
    """Snakemake's --configfile: nested keys of the later file replace the earlier file's."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _overlay(base[key], value)
        else:
            base[key] = value
    return base


@pytest.mark.parametrize("overlay", ["real_data.yaml", "hard_synthetic.yaml"])
def test_shipped_overlays_on_the_demo_config_are_valid(schema, shipped_config, overlay):
    config = _overlay(deepcopy(shipped_config), yaml.safe_load((REPO / "config" / overlay).read_text()))
    assert config_problems(config, schema) == []


def test_defaults_fill_a_minimal_config(schema, shipped_config):
    config = {"data": {"source": "folder"}}
    assert config_problems(config, schema) == []
    assert config["data"]["quiz_dir"] == "data"
    assert config["nnunet"]["planner"] == "nnUNetPlannerResEncM"
    assert config["synthetic"]["counts"] == shipped_config["synthetic"]["counts"]


def test_every_schema_property_has_a_description_and_default(schema):
    def walk(node, where):
        for name, sub in node.get("properties", {}).items():
            assert "description" in sub or sub.get("type") == "object", f"{where}.{name} lacks a description"
            assert "default" in sub, f"{where}.{name} lacks a default"
            walk(sub, f"{where}.{name}")

    walk(schema, "config")
    for name, shared in schema["$defs"].items():
        walk(shared, f"$defs.{name}")


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: c["nnunet"].update(dataset_id="abc"), "nnunet.dataset_id: 'abc' is not of type 'integer'"),
        (lambda c: c["data"].update(source="s3"), "data.source: 's3' is not one of"),
        (lambda c: c.update(trainig={}), "allowed keys:"),
        (lambda c: c["synthetic"]["counts"].update(train=[1, 2]), "synthetic.counts.train"),
        (lambda c: c["nnunet"]["cpu_configuration"].update(batch_size=0), "batch_size: 0 is less than"),
        (lambda c: c["inference"].update(export_workers="many"), "export_workers: 'many' does not match '^auto$'"),
    ],
)
def test_wrong_key_or_type_is_a_one_line_error(schema, shipped_config, change, expected):
    config = deepcopy(shipped_config)
    change(config)
    problems = config_problems(config, schema)
    assert len(problems) == 1
    assert expected in problems[0]
    assert "\n" not in problems[0]


def test_check_config_raises_with_every_problem(shipped_config):
    config = deepcopy(shipped_config)
    config["nnunet"]["dataset_id"] = "abc"
    config["resources"]["preprocess_threads"] = 0
    with pytest.raises(UserInputError) as err:
        check_config(config, SCHEMA_PATH)
    assert len(err.value.problems) == 2
