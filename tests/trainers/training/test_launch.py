"""Building the worker and ``accelerate launch`` commands, and watching worker processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from storage.config import Settings
from storage.errors import ConfigError
from trainers.training.launch import (
    LaunchPlan,
    launch_plan,
    log_path,
    read_log_tail,
    training_command,
    worker_command,
    worker_exit_code,
)
from trainers.training.local.config import LocalTrainConfig, configured_base_model


def test_the_worker_command_runs_the_worker_module():
    assert worker_command(7, python="/venv/bin/python") == ["/venv/bin/python", "-m", "trainers.training.worker", "--job-id", "7"]


def test_one_process_trains_in_plain_python(monkeypatch):
    monkeypatch.delenv("FTBOT_LAUNCHER", raising=False)
    monkeypatch.delenv("FTBOT_NUM_PROCESSES", raising=False)
    plan = launch_plan()
    assert plan == LaunchPlan("python", 1, None)
    assert training_command(3, plan, python="py") == ["py", "-m", "trainers.training.local.entry", "--job-id", "3"]


def test_several_processes_run_under_accelerate_launch(monkeypatch):
    monkeypatch.delenv("FTBOT_ACCELERATE_CONFIG", raising=False)
    plan = launch_plan(4)
    assert plan.launcher == "accelerate"
    assert training_command(9, plan, python="py") == [
        "py", "-m", "accelerate.commands.launch", "--num_processes", "4", "--multi_gpu",
        "-m", "trainers.training.local.entry", "--job-id", "9",
    ]


def test_environment_selects_the_launcher_and_an_accelerate_config(monkeypatch):
    monkeypatch.setenv("FTBOT_LAUNCHER", "accelerate")
    monkeypatch.setenv("FTBOT_NUM_PROCESSES", "2")
    monkeypatch.setenv("FTBOT_ACCELERATE_CONFIG", "/etc/fsdp.yaml")
    plan = launch_plan(settings=Settings.from_env())
    command = training_command(1, plan, python="py")
    assert command[:5] == ["py", "-m", "accelerate.commands.launch", "--num_processes", "2"]
    assert command[5:7] == ["--config_file", "/etc/fsdp.yaml"] and "--multi_gpu" not in command
    # A single process under accelerate (e.g. to use a DeepSpeed config on one GPU) is allowed too.
    monkeypatch.setenv("FTBOT_NUM_PROCESSES", "1")
    assert launch_plan(settings=Settings.from_env()).launcher == "accelerate"


@pytest.mark.parametrize("env, message", [
    ({"FTBOT_NUM_PROCESSES": "two"}, "whole number"),
    ({"FTBOT_NUM_PROCESSES": "0"}, "at least 1"),
    ({"FTBOT_LAUNCHER": "torchrun"}, "'python' or 'accelerate'"),
])
def test_bad_launch_settings_are_clear_errors(monkeypatch, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        launch_plan(settings=Settings.from_env())


def test_worker_exit_codes_are_seen_for_children(tmp_path):
    quick = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    deadline = time.monotonic() + 10
    while (code := worker_exit_code(quick.pid)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert code == 3
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert worker_exit_code(slow.pid) is None
    finally:
        slow.kill()
        slow.wait()


def test_log_tail_reads_the_end_of_the_job_log(monkeypatch, tmp_path):
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path))
    assert read_log_tail(5) == ""
    log_path(5).parent.mkdir(parents=True)
    log_path(5).write_text("".join(f"line {i}\n" for i in range(100)))
    tail = read_log_tail(5, lines=3)
    assert tail == "line 97\nline 98\nline 99\n"


def test_local_config_rejects_unknown_settings_and_resolves_the_base_model(monkeypatch):
    with pytest.raises(ConfigError, match="unknown local training setting"):
        LocalTrainConfig.from_dict({"base_model": "x", "learning_rte": 1})
    with pytest.raises(ConfigError, match="'sft' or 'dpo'"):
        LocalTrainConfig(method="ppo")
    monkeypatch.delenv("FTBOT_LOCAL_BASE_MODEL", raising=False)
    # FTBOT_BASE_MODEL is the deprecated name of the OpenAI model: never the on-prem base, whatever it names.
    monkeypatch.setenv("FTBOT_BASE_MODEL", "/models/llama-3.2-1b")
    assert configured_base_model(settings=Settings.from_env()) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert configured_base_model(settings=Settings.from_env(), fallback="ftbot:tiny") == "ftbot:tiny"
    monkeypatch.setenv("FTBOT_LOCAL_BASE_MODEL", "meta-llama/Llama-3.2-1B-Instruct")
    assert configured_base_model(settings=Settings.from_env()) == "meta-llama/Llama-3.2-1B-Instruct"
    assert configured_base_model("explicit", settings=Settings.from_env()) == "explicit"
