"""envs/*.yaml stay valid conda environment files, exactly pinned, and in step with requirements.txt."""

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)$")


def pip_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = PIN.match(line)
            assert match, f"{path.name}: {line!r} is not an exact pin"
            pins[match[1].lower()] = match[2]
    return pins


REQUIREMENTS = pip_pins(REPO / "requirements.txt")


def test_there_are_env_files():
    assert {p.stem for p in ENV_FILES} >= {"data", "nnunet"}


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_is_pinned_and_matches_requirements(env_file):
    env = yaml.safe_load(env_file.read_text())
    assert env["channels"][0] == "conda-forge" and "nodefaults" in env["channels"]
    conda_deps = [d for d in env["dependencies"] if isinstance(d, str)]
    for dep in conda_deps:
        assert re.match(r"^[a-z0-9_\-]+=[0-9.]+$", dep), f"{env_file.name}: conda dep {dep!r} is not pinned"
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert len(pip_sections) == 1, f"{env_file.name}: expected one pip section"
    for entry in pip_sections[0]:
        match = PIN.match(entry)
        assert match, f"{env_file.name}: {entry!r} is not an exact pin"
        name, version = match[1].lower(), match[2]
        assert name in REQUIREMENTS, f"{env_file.name}: {name} is not in requirements.txt"
        assert REQUIREMENTS[name] == version, (
            f"{env_file.name} pins {name}=={version}, requirements.txt pins {REQUIREMENTS[name]}"
        )


def test_installed_versions_match_requirements():
    from importlib.metadata import version

    for name, pinned in REQUIREMENTS.items():
        installed = version(name).split("+")[0]  # torch reports e.g. 2.13.0+cpu
        assert installed == pinned, f"installed {name} {installed} != pinned {pinned}"


def test_every_rule_names_an_existing_env():
    rules = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    envs = re.findall(r'conda:\s*\n\s*"([^"]+)"', rules)
    assert envs
    for env in envs:
        assert (REPO / "workflow" / "rules" / env).resolve().is_file(), env
