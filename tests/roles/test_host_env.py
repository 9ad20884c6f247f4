"""The runners' environment on one throwaway host: secrets and what the host is meant to run on.

A Hugging Face token used to be possible only through sophon_host_env_extra_env, which wrote it to
the 0644 env file and to every login shell. Now sophon_host_env_hub_token goes to a 0640
root:sophon-sd file that the env file names, never into the play's output; a token name in
extra_env is refused.

A Sophgo host whose chips were unusable used to get ACCELERATE_TORCH_DEVICE=cpu quietly; now the
env file records the runtime the operator asked for (SOPHON_SD_RUNTIME) and such a host fails.
"""

TOKEN = "hf_sdkitTestToken0123456789"
HOST_ENV_ONLY = {"sophon_sd_sophgo_runtime": False, "sophon_host_env_assets_source": "hub"}


def test_token_goes_to_a_private_file_and_nowhere_else(throwaway_host):
    result = throwaway_host.play("runtime.yml", {**HOST_ENV_ONLY, "sophon_host_env_hub_token": TOKEN}, tags="host_env")

    assert not result.failed, result.output[-3000:]
    assert TOKEN not in result.output
    assert throwaway_host.check_output("stat -c '%U:%G %a' /etc/sophon-sd/hub-token").strip() == "root:sophon-sd 640"
    assert throwaway_host.check_output("cat /etc/sophon-sd/hub-token").strip() == TOKEN
    env_file = throwaway_host.check_output("cat /etc/sophon-sd/env")
    assert "SOPHON_SD_HUB_TOKEN_FILE=/etc/sophon-sd/hub-token" in env_file and TOKEN not in env_file
    assert TOKEN not in throwaway_host.check_output("bash -lc env")
    # The runner user reads it through its group; other users cannot.
    assert throwaway_host.check_output("runuser -u sophon-sd -- cat /etc/sophon-sd/hub-token").strip() == TOKEN
    assert throwaway_host.run("runuser -u nobody -- cat /etc/sophon-sd/hub-token").returncode != 0


def test_no_token_removes_the_file(throwaway_host):
    result = throwaway_host.play("runtime.yml", HOST_ENV_ONLY, tags="host_env")

    assert not result.failed, result.output[-3000:]
    assert not throwaway_host.exists("/etc/sophon-sd/hub-token")
    assert "SOPHON_SD_HUB_TOKEN_FILE" not in throwaway_host.check_output("cat /etc/sophon-sd/env")


# A token in extra_env, and the other settings the role refuses, are unit tests of its checks
# (tests/unit/roles/sophon_host_env); the case below is their wiring on a real host.
def test_a_sophgo_host_without_usable_chips_is_not_made_a_cpu_host(throwaway_host):
    """The wiring of the role's check (action plugin and assert): its message stops the play, nothing changed."""
    before = throwaway_host.check_output("cat /etc/sophon-sd/env")
    assert "SOPHON_SD_RUNTIME=none" in before

    result = throwaway_host.play("runtime.yml", {"sophon_host_env_assets_source": "hub"}, tags="host_env")

    assert result.failed
    assert "is to run on its BM1684X chips (SOPHON_SD_RUNTIME=sophgo) but none is usable" in result.output
    assert "device nodes: no /dev/bm-sophon*" in result.output and "sophon_sd_sophgo_runtime: false" in result.output
    assert throwaway_host.check_output("cat /etc/sophon-sd/env") == before
