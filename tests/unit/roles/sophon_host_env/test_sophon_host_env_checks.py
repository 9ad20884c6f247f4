"""roles/sophon_host_env's checks of its settings (module_utils/sophon_host_env_checks.py): each message, in full.
The container suite (tests/roles/test_host_env.py) keeps the chip case as the wiring test of the role's action
plugin: a bad setting reaches it and its message stops the play with the env file left as it was."""

from __future__ import annotations

import pytest
import sophon_host_env_checks as checks

HOST = "sdkit-env-1"
TOKEN = "hf_sdkitTestToken0123456789"
FACT = {"chip_count": 2, "dev_nodes": ["/dev/bm-sophon0", "/dev/bm-sophon1"],
        "chips": [{"device": "/dev/bm-sophon0", "usable": True}, {"device": "/dev/bm-sophon1", "usable": True}]}
SETTINGS = dict(nofile_soft=65535, nofile_hard=524288, assets_source="bundle", device="tpu:0",
                devices=["tpu:0", "tpu:1"], environment={"SOPHON_SD_RUNTIME": "sophgo", "HF_HOME": "/var/lib/x"},
                runtime="sophgo", fact=FACT, extra_env={}, token_keys=["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"],
                env_file="/etc/sophon-sd/env", hub_token_file="/etc/sophon-sd/hub-token")


def problems(**changes) -> list[str]:
    return checks.problems(HOST, **{**SETTINGS, **changes})


def test_good_settings_have_no_problems():
    assert problems() == []
    assert problems(runtime="none", devices=[], device="cpu", fact={}) == [], "a CPU host needs no chip"


def settings_message(soft="65535", hard="524288", source="bundle", device="tpu:0", devices="tpu:0, tpu:1",
                     values="values fine") -> str:
    return (f"sophon_host_env settings on {HOST} are not usable: open files soft {soft} / hard {hard} (need 1024 <= "
            f"soft <= hard); assets source '{source}' (bundle or hub); device '{device}' (cpu or one of {devices}); "
            f"{values}.")


@pytest.mark.parametrize("changes, expected", [
    ({"nofile_soft": 512}, {"soft": "512"}),
    ({"nofile_soft": "many"}, {"soft": "many"}),
    ({"nofile_hard": 4096}, {"hard": "4096"}),
    ({"assets_source": "web"}, {"source": "web"}),
    ({"device": "tpu:7"}, {"device": "tpu:7"}),
    ({"device": "tpu:0", "devices": [], "runtime": "none"}, {"devices": "no chips found"}),
], ids=["soft-low", "soft-not-a-number", "hard-below-soft", "assets-source", "device", "device-no-chips"])
def test_unusable_setting_is_named_with_all_the_values(changes, expected):
    assert problems(**changes) == [settings_message(**expected)]


def test_env_values_the_file_cannot_carry_are_named():
    environment = {"A": "two words", "B": "it's", "C": "$HOME", "D": "a\\b", "E": "fine", "F": 5}
    assert problems(environment=environment) == [settings_message(
        values="values with spaces, quotes, $ or backslashes, which the env file cannot carry: A, B, C, D")]


@pytest.mark.parametrize("fact, found, nodes, faulted", [
    ({}, "no device fact (run the libsophon role first)", "no /dev/bm-sophon*", "none"),
    ({"chip_count": 0, "dev_nodes": ["/dev/bm-sophon0"], "chips": [{"device": "/dev/bm-sophon0", "usable": False}]},
     "0", "/dev/bm-sophon0", "/dev/bm-sophon0"),
], ids=["no-fact", "faulted"])
def test_a_sophgo_host_without_usable_chips_is_not_made_a_cpu_host(fact, found, nodes, faulted):
    assert problems(devices=[], device="cpu", fact=fact) == [
        f"{HOST} is to run on its BM1684X chips (SOPHON_SD_RUNTIME=sophgo) but none is usable. Found: {found} usable "
        f"chip(s); device nodes: {nodes}; faulted: {faulted}. Check the cards (lspci -d 1f1c:) and the driver (lsmod | "
        "grep bmsophon) and rerun, or provision the host without chips: sophon_sd_sophgo_runtime: false."]


def test_a_token_in_extra_env_is_refused_without_showing_it():
    """Was tests/roles/test_host_env.py::test_a_token_in_extra_env_is_refused."""
    found = problems(extra_env={"HF_TOKEN": TOKEN, "OTHER": "x", "HUGGING_FACE_HUB_TOKEN": TOKEN})
    assert found == [
        f"sophon_host_env_extra_env on {HOST} sets HF_TOKEN, HUGGING_FACE_HUB_TOKEN, which would put a token in "
        "/etc/sophon-sd/env (mode 0644) and in every login shell: set sophon_host_env_hub_token instead (from a "
        "vault); it goes to /etc/sophon-sd/hub-token, 0640."]
    assert TOKEN not in found[0]


def test_every_problem_is_named_at_once():
    """The three checks were three asserts, the first failing one stopping the play; now one message names all."""
    assert len(problems(assets_source="web", devices=[], device="cpu", extra_env={"HF_TOKEN": TOKEN})) == 3
