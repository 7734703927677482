"""The workflow config and its JSON schema."""

import re
from copy import deepcopy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from pancreas_mtl.config import check_config, config_problems, load_schema
from pancreas_mtl.errors import UserInputError
from pancreas_mtl.training.settings import stage_settings

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
# The page that shows the settings a real-data run gets (under its marker line).
SETTINGS_PAGE = REPO / "config" / "README.md"


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


def resolved_config(schema, *configfiles: str) -> dict:
    """The config a run gets from ``configfile: config/config.yaml`` and ``--configfile`` files, merged key by key
    as Snakemake merges them (``snakemake.utils.update_config``), then validated and given the schema's defaults as
    the workflow's start-up check does."""
    config: dict = {}
    for name in ["config/config.yaml", *configfiles]:
        update_config(config, yaml.safe_load((REPO / name).read_text()))
    assert config_problems(config, schema) == [], configfiles
    return config


def leaf_keys(node: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every non-mapping value under ``node``."""
    leaves = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            leaves.update(leaf_keys(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


@pytest.mark.parametrize("overlay", ["real_data.yaml", "hard_synthetic.yaml"])
def test_shipped_overlays_on_the_demo_config_are_valid(schema, overlay):
    resolved_config(schema, f"config/{overlay}")


# Keys that config/config.yaml sets and config/real_data.yaml leaves to it on purpose: right for the demo and
# for real data alike. Every other key config.yaml sets is sized for the CPU demo and is set again in
# real_data.yaml (test_real_data_sets_every_demo_key). A key or a section, with the reason it is shared.
SHARED_WITH_THE_DEMO = {
    "synthetic": "read only when data.source is synthetic",
    "nnunet.dataset_id": "names of the nnU-Net dataset and plans",
    "nnunet.dataset_name": "names of the nnU-Net dataset and plans",
    "nnunet.planner": "ResEnc M for both",
    "nnunet.plans_name": "ResEnc M for both",
    "nnunet.cpu_configuration": "read only when nnunet.configuration names it",
    "training.seed": "seeds",
    "training.sampling_seed": "seeds",
    "training.selection_fraction": "the share of training cases that select checkpoints (the schema's default)",
    "postprocessing": "the lesion-presence prior holds for every labelled quiz case",
    "benchmark": "which cases are timed, and how often",
    "evaluation": "metric definitions",
    "wandb": "logging",
}


def _shared(key: str) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:n]) in SHARED_WITH_THE_DEMO for n in range(1, len(parts) + 1))


def test_real_data_sets_every_demo_key():
    demo = leaf_keys(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    real = leaf_keys(yaml.safe_load((REPO / "config" / "real_data.yaml").read_text()))
    leaking = [key for key in demo if key not in real and not _shared(key)]
    assert not leaking, (
        "config/config.yaml sets these for the CPU demo, and a real-data run (--configfile config/real_data.yaml) "
        f"would inherit them: {', '.join(leaking)}. Set each in config/real_data.yaml to its real-data value, or, "
        "if the demo's value is right for real data too, add it with its reason to SHARED_WITH_THE_DEMO in "
        "tests/test_config.py"
    )
    stale = [key for key in SHARED_WITH_THE_DEMO if not any(k == key or k.startswith(key + ".") for k in demo)]
    assert not stale, f"SHARED_WITH_THE_DEMO names keys config/config.yaml does not set: {stale}"


def readme_effective_real_data_settings() -> dict:
    """The yaml block under SETTINGS_PAGE's marker line for the effective real-data settings."""
    readme = SETTINGS_PAGE.read_text()
    found = re.search(r"<!-- effective real-data settings.*?-->\s*```yaml\n(.*?)```", readme, flags=re.S)
    assert found, f"{SETTINGS_PAGE} lost its block of effective real-data settings (<!-- effective real-data settings)"
    return yaml.safe_load(found.group(1))


def test_readme_shows_the_effective_real_data_settings(schema):
    config = resolved_config(schema, "config/real_data.yaml")
    effective = leaf_keys(config)
    shown = leaf_keys(readme_effective_real_data_settings())
    wrong = {
        key: (value, effective.get(key, "<not a config key>"))
        for key, value in shown.items()
        if effective.get(key, object()) != value
    }
    assert not wrong, f"{SETTINGS_PAGE} shows (left) what a real-data run does not get (right): {wrong}"
    # every training and inference key the demo config sets is one the page shows as real data's
    demo = leaf_keys(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    missing = [key for key in demo if key.startswith(("training.", "inference.")) and key not in shown]
    assert not missing, f"{SETTINGS_PAGE}'s effective real-data settings leave out {missing}"


def test_real_data_trains_as_readme_documents(schema):
    """The settings a real-data run hands the trainers (stage_settings), for the keys docs/model.md names."""
    training = resolved_config(schema, "config/real_data.yaml")["training"]
    stage1, stage2 = stage_settings(training, "stage1"), stage_settings(training, "stage2")
    assert (stage1.optimizer, stage1.initial_lr, stage1.num_epochs) == ("sgd", 0.01, 1000)
    assert stage2.initial_lr == 0.0003 and stage2.num_epochs == 300
    schema_stage = schema["$defs"]["stage_settings"]["properties"]
    assert stage1.lesion_centred_share == stage2.lesion_centred_share == schema_stage["lesion_centred_share"]["default"]
    assert training["device"] == "auto" and training["stage1"]["compile"] == "auto"


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
