"""The Dockerfile, without a Docker engine: its rules are parsed and checked, and its builder
stage's install steps are replayed into a fresh venv (slow) to prove the image would work."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from runtime_lock import LOCK, lock_text, read_pins, runtime_closure

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|apk|yum|dnf|gcc|g\+\+|make|build-essential|pip install|pip wheel|"
    r"setup\.py|poetry|uv pip)\b"
)
OCI_LABELS = (
    "title",
    "description",
    "version",
    "revision",
    "created",
    "licenses",
    "source",
    "documentation",
)


@dataclass
class Instruction:
    keyword: str
    value: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.value for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined and FROM's ARGs
    substituted (enough of the Dockerfile syntax for the rules below)."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        value = value.strip()
        if keyword == "ARG" and not stages:
            name, _, default = value.partition("=")
            args[name] = default
        elif keyword == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)
            parts = base.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, value))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


def test_is_multi_stage_with_a_named_builder(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    assert stages[-1].name is None or stages[-1].name != "builder"


def test_base_images_are_pinned_python_311_slim_bookworm(stages: list[Stage]) -> None:
    for stage in stages:
        assert re.fullmatch(
            r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", stage.base
        ), stage.base
    assert len({s.base for s in stages}) == 1, "builder and final stage must share the base"


def test_builder_installs_the_pinned_requirements_then_the_project_wheel(
    stages: list[Stage],
) -> None:
    runs = " && ".join(stages[0].all("RUN"))
    assert "venv --without-pip /opt/venv" in runs
    lock_install = runs.index("-r requirements/runtime.txt")
    wheel_install = runs.index("/tmp/wheels/*.whl")
    assert lock_install < wheel_install
    (lock_run,) = [r for r in stages[0].all("RUN") if "-r requirements/runtime.txt" in r]
    assert "--no-deps" in lock_run
    assert "pip wheel --no-deps" in runs
    assert "check" in runs[wheel_install:], "pip check after installing"


def test_final_stage_copies_the_venv_only_and_has_no_build_tools(stages: list[Stage]) -> None:
    final = stages[-1]
    copies = final.all("COPY") + final.all("ADD")
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    for run in final.all("RUN"):
        removed = re.sub(r"pip uninstall [^&;]*", "", run)
        assert not BUILD_TOOLS.search(removed), run
    assert any("uninstall" in r and "pip" in r for r in final.all("RUN")), (
        "the base image's pip is removed from the final stage"
    )
    env = " ".join(final.all("ENV"))
    assert 'PATH="/opt/venv/bin:' in env


def test_runs_as_numeric_non_root_user(stages: list[Stage]) -> None:
    final = stages[-1]
    users = final.all("USER")
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid == "65532"
    assert not gid or gid.isdigit()
    keywords = [i.keyword for i in final.instructions]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert "RUN" not in keywords[last_user:], "nothing runs as root after USER"


def test_entrypoint_is_hardening_run_in_exec_form(stages: list[Stage]) -> None:
    (entrypoint,) = stages[-1].all("ENTRYPOINT")
    assert entrypoint == '["hardening", "run"]'
    assert not stages[-1].all("CMD")


def test_oci_labels(stages: list[Stage]) -> None:
    labels = " ".join(stages[-1].all("LABEL"))
    for name in OCI_LABELS:
        assert f"org.opencontainers.image.{name}=" in labels, name


def test_dockerignore_sends_only_what_the_build_copies(stages: list[Stage]) -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**", "everything is excluded first"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        src
        for stage in stages
        for value in stage.all("COPY")
        if not value.startswith("--from")
        for src in shlex.split(value)[:-1]
    }
    assert copied <= included, copied - included
    for src in copied:
        assert (REPO / src).exists() or src == "README.md", src


def test_requirements_pin_every_runtime_dependency_within_pyproject_ranges() -> None:
    """Offline: every line is an exact pin and every pyproject dependency is pinned inside its
    declared range. (That the pins form a complete, consistent set is proven by the slow test:
    it installs them with --no-deps and runs pip check.)"""
    pins = read_pins(LOCK.read_text())
    assert pins, "no pins"
    for name, version in pins.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), f"{name} is not pinned"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for text in pyproject["project"]["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} (a pyproject dependency) is not pinned"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} is outside pyproject's {requirement.specifier}"
        )


def test_requirements_match_the_dev_venv_when_it_has_the_same_versions() -> None:
    """The lock is regenerated from the dev venv (runtime_lock.py). Where the venv holds exactly
    the pinned versions (as after a regeneration), the closure must be the same set: a
    dependency added to pyproject without regenerating shows up here."""
    pins = read_pins(LOCK.read_text())
    closure = {name: version for name, (version, _) in runtime_closure().items()}
    if any(closure.get(name) != version for name, version in pins.items() if name in closure):
        pytest.skip("the dev venv holds other versions than the lock; the slow test covers it")
    assert set(closure) == set(pins), (
        "requirements/runtime.txt is stale: "
        ".venv/bin/python tests/packaging/runtime_lock.py > requirements/runtime.txt"
    )
    assert LOCK.read_text() == lock_text()


# --------------------------------------------------------------------------------------------
# Replay the builder stage


def _build_context(dest: Path) -> None:
    """What .dockerignore lets through: pyproject.toml, README.md, requirements, operator/."""
    dest.mkdir()
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    (dest / "requirements").mkdir()
    shutil.copy2(LOCK, dest / "requirements" / "runtime.txt")
    shutil.copytree(
        REPO / "operator",
        dest / "operator",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    readme = REPO / "README.md"
    if not readme.exists():
        pytest.fail("README.md is missing: pyproject's readme= makes the wheel build need it")
    shutil.copy2(readme, dest / "README.md")


@pytest.mark.slow
def test_builder_steps_install_a_working_hardening_into_a_fresh_venv(
    stages: list[Stage], tmp_path: Path
) -> None:
    """Run the builder stage's RUN lines (venv at tmp, this interpreter's pip as the image's),
    then `hardening --help` and `hardening run --help` from the new venv."""
    context = tmp_path / "src"
    _build_context(context)
    venv = tmp_path / "venv"
    wheels = tmp_path / "wheels"
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").symlink_to(sys.executable)  # `python` in the RUN lines: a 3.11 with pip
    env = {
        "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        # The pip cache is allowed here (the image build uses PIP_NO_CACHE_DIR=1).
    }
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CACHE_DIR", "XDG_CACHE_HOME"):
        if key in os.environ:
            env[key] = os.environ[key]
    for run in stages[0].all("RUN"):
        command = run.replace("/opt/venv", str(venv)).replace("/tmp/wheels", str(wheels))
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert not (venv / "bin" / "pip").exists(), "the venv must not carry pip"
    hardening = venv / "bin" / "hardening"
    for argv in ([str(hardening), "--help"], [str(hardening), "run", "--help"]):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "usage: hardening" in proc.stdout
    run_help = proc.stdout
    for option in ("--namespace", "--all-namespaces", "--metrics-port", "--log-format"):
        assert option in run_help
    for option in ("--leader-elect", "--lease-name", "--lease-duration", "--renew-deadline"):
        assert option in run_help
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    listed = subprocess.run(
        [*pip, "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = {canonicalize_name(d["name"]): d["version"] for d in json.loads(listed)}
    assert installed.pop("server-hardening") == "0.1.0"
    assert installed == read_pins(LOCK.read_text()), "the venv holds exactly the pinned set"

    # The wheel holds the product only: no developer tools, no test doubles.
    (wheel,) = wheels.glob("server_hardening-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if n.endswith(".py")}
    assert packages == {"server_hardening"}, packages
    assert not [n for n in names if "devtools" in n or "moto" in n or "controlplane" in n]
    top_help = subprocess.run(
        [str(hardening), "--help"], capture_output=True, text=True, check=True, env=env
    ).stdout
    # The product's commands, and none of the developer package's (dev, demo).
    commands = set(top_help.split("{", 1)[1].split("}", 1)[0].split(","))
    assert {"plan", "apply", "verify", "crd", "run"} <= commands, top_help
    assert not commands & {"dev", "demo"}, top_help
    # ... and it plans every example, from the installed wheel alone.
    for example in sorted(EXAMPLES.glob("*.yaml")):
        proc = subprocess.run(
            [str(hardening), "plan", "-f", str(example), "-o", "json"],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        assert proc.returncode == 0, f"{example.name}: {proc.stderr}"
        assert json.loads(proc.stdout)["profile"], example.name
