"""Settings: defaults that work on a new machine, environment and .env, flags on top, one-line errors."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from controller import settings as settings_mod
from controller.settings import SettingsError, detect_profile, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key, no OVERNIGHT_* variables, no .env from the developer's checkout."""
    import os

    for name in list(os.environ):
        if name.startswith("OVERNIGHT_") or name == "ANTHROPIC_API_KEY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


class FakeNVML:
    """Stands in for the pynvml module: a driver with `count` GPUs (or none)."""

    def __init__(self, count: int | None) -> None:
        self.count = count

    def nvmlInit(self) -> None:
        if self.count is None:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return self.count or 0

    def nvmlShutdown(self) -> None:
        pass


def test_defaults_on_this_machine_are_cpu_and_search() -> None:
    s = load_settings()
    assert s.profile == "cpu"  # no GPU here
    assert s.agent == "search"  # no ANTHROPIC_API_KEY
    assert s.data_dir == Path("data/cpu")
    assert s.runs_dir == Path("runs")
    assert s.max_fix_attempts == 2
    assert s.hours is None and s.until is None and s.max_experiments is None
    assert s.gpu is None
    assert "no ANTHROPIC_API_KEY" in s.agent_reason()


def test_default_tag_is_today_like_nov23() -> None:
    assert settings_mod.default_tag(dt.date(2025, 11, 23)) == "nov23"
    assert re.fullmatch(r"[a-z]{3}\d{2}", load_settings().tag)


def test_api_key_makes_anthropic_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    s = load_settings()
    assert s.agent == "anthropic"
    assert "ANTHROPIC_API_KEY is set" in s.agent_reason()
    assert load_settings(agent="search").agent == "search"


def test_gpu_profile_needs_both_a_gpu_and_the_nvidia_runtime() -> None:
    with_runtime = {"Runtimes": {"runc": {}, "nvidia": {"path": "nvidia-container-runtime"}}}
    without = {"Runtimes": {"runc": {}}}
    assert detect_profile(nvml=FakeNVML(2), docker_info=with_runtime) == "gpu"
    assert detect_profile(nvml=FakeNVML(2), docker_info=without) == "cpu"
    assert detect_profile(nvml=FakeNVML(0), docker_info=with_runtime) == "cpu"
    assert detect_profile(nvml=FakeNVML(None), docker_info=with_runtime) == "cpu"


def test_gpu_profile_uses_gpu_zero_unless_told() -> None:
    assert load_settings(profile="gpu").gpu == 0
    assert load_settings(profile="gpu", gpus="3,1").gpu == 3
    assert load_settings(profile="gpu").data_dir == Path("data/gpu")


def test_environment_and_dotenv_then_flags_on_top(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OVERNIGHT_PROFILE=test\nOVERNIGHT_SEED=7\nOVERNIGHT_HOURS=2\n")
    monkeypatch.setenv("OVERNIGHT_SEED", "9")  # the environment beats .env
    s = load_settings()
    assert (s.profile, s.seed, s.hours) == ("test", 9, 2.0)
    s = load_settings(seed="11", hours=None)  # a flag beats both; an absent flag changes nothing
    assert (s.seed, s.hours) == (11, 2.0)


def test_deadline_is_the_earlier_of_hours_and_until() -> None:
    now = dt.datetime(2025, 11, 23, 22, 0)
    assert load_settings(hours="8").deadline(now) == dt.datetime(2025, 11, 24, 6, 0)
    assert load_settings(until="07:30").deadline(now) == dt.datetime(2025, 11, 24, 7, 30)
    assert load_settings(until="23:00").deadline(now) == dt.datetime(2025, 11, 23, 23, 0)
    assert load_settings(hours="1", until="07:30").deadline(now) == dt.datetime(2025, 11, 23, 23, 0)
    assert load_settings().deadline(now) is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"profile": "tpu"}, "--profile / OVERNIGHT_PROFILE: unknown profile 'tpu'; choose one of: cpu, gpu, test"),
        ({"agent": "gpt"}, "--agent / OVERNIGHT_AGENT: Input should be 'anthropic' or 'search'"),
        ({"until": "25:00"}, "--until / OVERNIGHT_UNTIL: '25:00' is not a time like 07:30"),
        ({"hours": "-1"}, "--hours / OVERNIGHT_HOURS: Input should be greater than 0"),
        ({"max_experiments": "many"}, "--max-experiments / OVERNIGHT_MAX_EXPERIMENTS: Input should be a valid"),
        ({"tag": "My Night"}, "--tag / OVERNIGHT_TAG: 'My Night' must be 1-64 characters"),
        ({"tag": "a..b"}, "--tag / OVERNIGHT_TAG"),
        ({"gpus": "0,x"}, "--gpus / OVERNIGHT_GPUS: '0,x' is not a comma-separated list"),
        ({"max_fix_attempts": "99"}, "--max-fix-attempts / OVERNIGHT_MAX_FIX_ATTEMPTS: Input should be less"),
    ],
)
def test_bad_values_are_one_line_errors(overrides: dict, expected: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(**overrides)
    message = str(info.value)
    assert message.startswith("bad setting " + expected.split(":")[0])
    assert expected in message
    assert "\n" not in message


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERNIGHT_SEED", "abc")
    with pytest.raises(SettingsError, match=r"OVERNIGHT_SEED: .*\(got 'abc'\)"):
        load_settings()
