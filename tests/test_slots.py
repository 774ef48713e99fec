"""The slot plan: one slot per GPU NVML sees (or per GPU listed), on CPU profiles disjoint equal
sets of cores, one slot per experiment at once on a cluster; bad plans are one-line errors
before anything starts. NVML is faked (no GPU here); the cores are given."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_settings import FakeNVML

from controller.settings import SettingsError, load_settings
from controller.slots import GiB, Slot, SlotError, cpuset_string, plan_slots, slot_lines

BIG_HOST = 256 * GiB


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No OVERNIGHT_* variables and no .env from the developer's checkout."""
    for name in list(os.environ):
        if name.startswith("OVERNIGHT_") or name == "ANTHROPIC_API_KEY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def gpu_plan(visible: int | None, **settings: str) -> list[Slot]:
    """The plan on the gpu profile where NVML sees `visible` GPUs (None: no driver)."""
    return plan_slots(load_settings(profile="gpu", **settings), nvml=FakeNVML(visible), host_memory_bytes=BIG_HOST)


def cpu_plan(cpus: set[int], **settings: str) -> list[Slot]:
    return plan_slots(load_settings(profile="cpu", **settings), cpus=cpus, host_memory_bytes=BIG_HOST)


# -- gpu profile -------------------------------------------------------------------------------


def test_the_gpu_profile_takes_every_gpu_nvml_sees_by_default_one_slot_each() -> None:
    expected = [Slot(0, gpu=0), Slot(1, gpu=1), Slot(2, gpu=2), Slot(3, gpu=3)]
    assert gpu_plan(4) == expected
    assert gpu_plan(4, gpus="all") == expected
    assert gpu_plan(4, gpus="ALL") == expected
    assert all(slot.cpuset is None for slot in expected)  # a GPU slot is not pinned to cores


def test_an_explicit_gpu_list_gives_one_slot_per_listed_gpu_in_its_order() -> None:
    assert gpu_plan(4, gpus="0,1,3") == [Slot(0, gpu=0), Slot(1, gpu=1), Slot(2, gpu=3)]
    assert gpu_plan(4, gpus=" 3, 1") == [Slot(0, gpu=3), Slot(1, gpu=1)]


def test_a_gpu_nvml_does_not_see_is_a_one_line_error_naming_the_visible_ones() -> None:
    with pytest.raises(SlotError) as info:
        gpu_plan(4, gpus="1,4")
    assert str(info.value) == "GPU 4 is not here: NVML sees GPUs 0-3; choose --gpus from those, or --gpus all"
    with pytest.raises(SlotError, match="GPU 1 is not here: NVML sees GPU 0;"):
        gpu_plan(1, gpus="1")


def test_the_gpu_profile_without_a_gpu_says_what_to_do() -> None:
    for driver in (None, 0):  # no NVML library, or a driver that sees no GPU
        with pytest.raises(SlotError, match="the gpu profile needs a GPU, but NVML sees none: use --profile cpu"):
            gpu_plan(driver)


def test_a_gpu_listed_twice_is_a_bad_setting() -> None:
    with pytest.raises(SettingsError, match="GPU 1 is listed twice: give each GPU once"):
        load_settings(profile="gpu", gpus="1,3,1")


def test_slots_on_the_gpu_profile_must_match_the_gpus() -> None:
    with pytest.raises(
        SlotError,
        match="--slots 2 does not apply to the gpu profile, which has one slot per GPU "
        r"\(4 here\): drop --slots and choose the GPUs with --gpus",
    ):
        gpu_plan(4, slots="2")
    assert gpu_plan(4, gpus="1,2", slots="2") == [Slot(0, gpu=1), Slot(1, gpu=2)]


# -- cpu profiles ------------------------------------------------------------------------------


def test_one_cpu_slot_pins_nothing_as_before() -> None:
    assert cpu_plan({0, 1, 2, 3}) == [Slot(0)]
    assert plan_slots(load_settings(profile="test"), cpus={0, 1}) == [Slot(0)]


def test_cpu_slots_split_the_usable_cores_into_disjoint_equal_sets() -> None:
    assert cpu_plan({0, 1}, slots="2") == [Slot(0, cpuset="0"), Slot(1, cpuset="1")]
    assert cpu_plan(set(range(8)), slots="2") == [Slot(0, cpuset="0-3"), Slot(1, cpuset="4-7")]
    # 8 cores in 3 equal slots: two cores each, the last two unused (equal budgets, comparable runs)
    assert [s.cpuset for s in cpu_plan(set(range(8)), slots="3")] == ["0-1", "2-3", "4-5"]
    # only the cores this process may use, whatever their numbers
    assert [s.cpuset for s in cpu_plan({2, 3, 6, 9}, slots="2")] == ["2-3", "6,9"]


def test_cores_per_slot_pins_even_a_single_slot() -> None:
    settings = load_settings(profile="cpu")
    assert plan_slots(settings, cpus={0, 1}, cores_per_slot=1) == [Slot(0, cpuset="0")]
    settings = load_settings(profile="cpu", slots="2")
    assert plan_slots(settings, cpus=set(range(8)), cores_per_slot=1, host_memory_bytes=BIG_HOST) == [
        Slot(0, cpuset="0"),
        Slot(1, cpuset="1"),
    ]


def test_more_slots_than_cores_is_a_one_line_error() -> None:
    with pytest.raises(SlotError) as info:
        cpu_plan({0, 1}, slots="3")
    assert str(info.value) == (
        "--slots 3 needs 3 CPU cores, and this process may use 2 (CPUs 0-1): use --slots 2 or fewer"
    )
    with pytest.raises(SlotError, match="--slots 2 needs 4 CPU cores, and this process may use 3"):
        plan_slots(load_settings(profile="cpu", slots="2"), cpus={0, 1, 2}, cores_per_slot=2)


def test_gpus_on_a_cpu_profile_is_an_error_that_says_what_to_do() -> None:
    for gpus in ("0", "all"):
        with pytest.raises(
            SlotError,
            match="--gpus is for the gpu profile, and this night's profile is cpu: "
            r"drop --gpus \(use --slots N",
        ):
            cpu_plan({0, 1}, gpus=gpus)


def test_cpusets_are_written_as_ranges() -> None:
    assert cpuset_string([0]) == "0"
    assert cpuset_string([3, 2]) == "2-3"
    assert cpuset_string([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


# -- memory ------------------------------------------------------------------------------------


def test_slots_whose_memory_limits_do_not_fit_the_host_are_refused() -> None:
    settings = load_settings(profile="cpu", slots="2", memory_limit_gb="8")
    with pytest.raises(SlotError) as info:
        plan_slots(settings, cpus={0, 1}, host_memory_bytes=12 * GiB)
    assert str(info.value) == (
        "2 slots x 8 GB per experiment (--memory-limit-gb) need 16.2 GB, more than this "
        "machine's 12.0 GB of RAM: use fewer slots (1 fit) or a smaller --memory-limit-gb"
    )
    assert len(plan_slots(settings, cpus={0, 1}, host_memory_bytes=17 * GiB)) == 2
    smaller = load_settings(profile="cpu", slots="2", memory_limit_gb="4")
    assert len(plan_slots(smaller, cpus={0, 1}, host_memory_bytes=12 * GiB)) == 2
    eight = load_settings(profile="gpu", memory_limit_gb="24")
    with pytest.raises(SlotError, match="8 slots x 24 GB per experiment"):
        plan_slots(eight, nvml=FakeNVML(8), host_memory_bytes=128 * GiB)


def test_one_slot_keeps_todays_behaviour_whatever_the_host_ram() -> None:
    # One slot has no neighbour to starve: its limit is a cap, as it always was.
    assert plan_slots(load_settings(profile="cpu", memory_limit_gb="8"), cpus={0, 1}, host_memory_bytes=4 * GiB) == [
        Slot(0)
    ]


# -- kubernetes --------------------------------------------------------------------------------


def test_on_kubernetes_slots_are_jobs_at_once_each_asking_for_one_gpu() -> None:
    settings = load_settings(profile="gpu", backend="kubernetes", slots="3")
    slots = plan_slots(settings, nvml=FakeNVML(None))  # no local GPU needed: the cluster has them
    assert slots == [Slot(0, gpu=0), Slot(1, gpu=0), Slot(2, gpu=0)]
    assert slot_lines(slots, settings)[2] == (
        "slot 2: a job on the cluster with one nvidia.com/gpu, 24 GB RAM per container"
    )
    cpu = load_settings(profile="cpu", backend="kubernetes", slots="2")
    assert plan_slots(cpu, cpus={0}) == [Slot(0), Slot(1)]  # no local pinning either
    with pytest.raises(
        SlotError,
        match="--gpus picks GPUs of this machine; on the kubernetes backend the "
        "cluster picks them: drop --gpus and use --slots N",
    ):
        plan_slots(load_settings(profile="gpu", backend="kubernetes", gpus="0,1"))


# -- what a person reads -----------------------------------------------------------------------


def test_each_slot_is_one_line_saying_where_it_runs() -> None:
    gpu = load_settings(profile="gpu", gpus="1,3")
    assert slot_lines(gpu_plan(4, gpus="1,3"), gpu) == [
        "slot 0: GPU 1, 24 GB RAM per container",
        "slot 1: GPU 3, 24 GB RAM per container",
    ]
    cpu = load_settings(profile="cpu", slots="2", memory_limit_gb="2")
    assert slot_lines(plan_slots(cpu, cpus={0, 1}, host_memory_bytes=BIG_HOST), cpu) == [
        "slot 0: CPUs 0, 2 GB RAM per container",
        "slot 1: CPUs 1, 2 GB RAM per container",
    ]
    one = load_settings(profile="cpu")
    assert slot_lines([Slot(0)], one) == ["slot 0: all CPUs (not pinned), 2 GB RAM per container"]
