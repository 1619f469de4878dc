"""The Dockerfile: static checks that hold without Docker, and real builds of both images where a daemon answers.

Static: every extra the Dockerfile installs exists in pyproject.toml; the bot image installs no `local` (no torch)
but what the bot needs (postgres, cluster); the Ray base image's version is inside the `cluster` extra's ray range;
no secret is set in the image; both images run as a non-root user; the bot's HEALTHCHECK asks the route bot/http.py
serves. Builds: only when `docker info` succeeds (CI and this machine have the CLI but no daemon: skipped, with why).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.fixtures.paths import REPO

DOCKERFILE = REPO / "Dockerfile"
TARGETS = ("bot", "worker")


def _text() -> str:
    return DOCKERFILE.read_text()


def _stages() -> dict[str, str]:
    """Each stage's instructions by target name (``FROM … AS name``)."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\w+)\s*$", _text(), flags=re.MULTILINE)
    return {name: body for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def _args() -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", _text(), flags=re.MULTILINE))


def _installed_extras(stage: str) -> set[str]:
    return {extra.strip() for group in re.findall(r"pip install '\.\[([^\]]+)\]'", stage) for extra in group.split(",")}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_dockerfile_has_a_bot_and_a_worker_target() -> None:
    assert set(_stages()) == set(TARGETS)


def test_every_extra_the_images_install_exists() -> None:
    extras = set(_pyproject()["project"]["optional-dependencies"])
    for name, stage in _stages().items():
        installed = _installed_extras(stage)
        assert installed, f"the {name} image installs ftbot without extras"
        assert installed <= extras, f"the {name} image installs extras pyproject.toml does not define: {installed - extras}"


def test_the_bot_image_has_no_torch_and_the_worker_has_the_training_stack() -> None:
    stages = _stages()
    bot, worker = _installed_extras(stages["bot"]), _installed_extras(stages["worker"])
    assert "local" not in bot and "all" not in bot, "the bot image would carry torch"
    assert not [line for line in stages["bot"].splitlines() if line.startswith("RUN") and "torch" in line]
    assert {"postgres", "cluster"} <= bot  # PostgreSQL for two bots, the Ray Jobs client and s3fs for artifacts
    assert {"local", "cluster"} <= worker


def test_the_ray_image_matches_the_cluster_extras_ray_range() -> None:
    image = _args()["RAY_IMAGE"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", image)
    assert match, f"{image}: expected rayproject/ray:<version>-py<python>-gpu"
    [ray] = [Requirement(r) for r in _pyproject()["project"]["optional-dependencies"]["cluster"] if Requirement(r).name == "ray"]
    assert Version(match.group(1)) in ray.specifier, f"Ray {match.group(1)} is outside the cluster extra's {ray.specifier}"
    python = Version(f"{match.group(2)}.{match.group(3)}")
    assert python in Requirement(f"python{_pyproject()['project']['requires-python']}").specifier
    assert f"python:{python}" in _args()["PYTHON_IMAGE"], "the bot and the workers should run one Python version"


def test_the_torch_pin_is_the_one_the_readme_installs() -> None:
    first_command = (REPO / "README.md").read_text().split("```sh\n")[1].split("\n")[0]
    assert f"torch=={_args()['TORCH_VERSION']}" in first_command


def test_no_secret_is_baked_into_an_image() -> None:
    secret = re.compile(r"^(ENV|ARG)\b.*\b(SLACK_\w*TOKEN|SLACK_SIGNING_SECRET|AWS_SECRET_ACCESS_KEY|OPENAI_API_KEY|"
                        r"TOGETHER_API_KEY|FTBOT_DATABASE_URL|HF_TOKEN)\b", re.MULTILINE)
    assert not secret.findall(_text())
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env"} <= set(ignored)


def test_both_images_run_as_an_unprivileged_user_and_the_bot_has_a_health_check() -> None:
    for name, stage in _stages().items():
        users = re.findall(r"^USER\s+(\S+)", stage, flags=re.MULTILINE)
        assert users and users[-1] not in ("root", "0"), f"the {name} image runs as root"
    bot = _stages()["bot"]
    assert "/healthz" in bot and '"/healthz"' in (REPO / "bot" / "http.py").read_text()
    assert re.search(r'^CMD \["ftbot", "run"', bot, flags=re.MULTILINE)


def _docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI on this machine"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Docker daemon answers `docker info`: {reason}"
    return None


@pytest.fixture(scope="module")
def docker() -> None:
    reason = _docker_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_the_image_builds(docker: None, target: str) -> None:
    tag = f"ftbot-{target}:test"
    build = subprocess.run(["docker", "build", "--target", target, "-t", tag, str(REPO)],
                           capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, build.stderr[-4000:]
    command = ["ftbot", "--help"] if target == "bot" else ["python", "-c", "import ray, torch, trainers.training.worker"]
    ran = subprocess.run(["docker", "run", "--rm", tag, *command], capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-4000:]
    if target == "bot":  # the bot image has no torch
        probe = subprocess.run(["docker", "run", "--rm", tag, "python", "-c", "import torch"], capture_output=True, timeout=300)
        assert probe.returncode != 0
