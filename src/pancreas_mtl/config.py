"""Validation of the workflow configuration against its JSON schema, with one line per problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pancreas_mtl.errors import UserInputError


def _with_defaults(validator_class):
    """A validator that fills in each missing property's ``default`` before checking it."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    default = subschema["default"]
                    instance[name] = dict(default) if isinstance(default, dict) else default
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema(schema_path: str | Path) -> dict:
    return yaml.safe_load(Path(schema_path).read_text())


def _location(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return path or "(top level)"


def _allowed_keys(node: dict, schema: dict) -> list[str]:
    """The property names a schema node allows, its ``$ref``'d shared block included."""
    keys = set(node.get("properties", {}))
    ref = node.get("$ref", "")
    if ref.startswith("#/$defs/"):
        keys |= set(_allowed_keys(schema["$defs"][ref[len("#/$defs/") :]], schema))
    return sorted(keys)


def config_problems(config: dict[str, Any], schema: dict) -> list[str]:
    """Fill defaults into ``config`` in place and return one readable line per schema violation."""
    validator = _DefaultFillingValidator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    problems = []
    for error in errors:
        if error.validator in ("additionalProperties", "unevaluatedProperties"):
            allowed = _allowed_keys(error.schema, schema)
            problems.append(f"{_location(error)}: {error.message}; allowed keys: {', '.join(allowed)}")
        else:
            problems.append(f"{_location(error)}: {error.message}")
    return problems


def gpu_problems(config: dict[str, Any]) -> list[str]:
    """Settings that pass the schema but contradict each other about a training job's GPUs."""
    training, resources = config["training"], config["resources"]
    num_gpus, declared = training["num_gpus"], resources["train_gpus"]
    problems = []
    if num_gpus > 1 and declared != num_gpus:
        problems.append(
            f"training.num_gpus is {num_gpus} but resources.train_gpus is {declared}: a job that trains on "
            f"{num_gpus} GPUs must ask for {num_gpus} (set both to the same number)"
        )
    elif num_gpus == 1 and declared > 1:
        problems.append(
            f"resources.train_gpus is {declared} but training.num_gpus is 1: the job would hold {declared} GPUs "
            "and train on one (set training.num_gpus to use them, or resources.train_gpus to 1)"
        )
    if num_gpus > 1 and training["device"] == "cpu":
        problems.append(f"training.num_gpus is {num_gpus} but training.device is cpu")
    return problems


def check_config(config: dict[str, Any], schema_path: str | Path) -> dict[str, Any]:
    """Validate (and default-fill) the workflow config; raise a readable error listing every problem."""
    problems = config_problems(config, load_schema(schema_path))
    if not problems:
        problems = gpu_problems(config)
    if problems:
        raise UserInputError(f"invalid configuration (checked against {schema_path})", problems)
    return config


def lesion_prior_threshold(postprocessing: dict) -> float | None:
    """The lesion-presence prior's relative threshold from the config's ``postprocessing`` section (None: off)."""
    prior = postprocessing["lesion_presence_prior"]
    return prior["relative_threshold"] if prior["enabled"] else None
