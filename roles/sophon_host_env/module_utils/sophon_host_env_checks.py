"""The sophon_host_env role's checks of its settings, before the host changes: usable environment values, a
usable chip on a Sophgo host, no token in the world-readable env file.

Imported by the role's action plugin (action_plugins/sophon_host_env_check.py) and by the unit tests
(tests/unit/roles/sophon_host_env). Stdlib only. The role's tests assert the messages' text.
"""

import re

# What the env file (KEY=value lines, read by shells and systemd) can carry without quoting.
PLAIN_VALUE = re.compile(r"""^[^\s"'$`\\]*$""")


def _int(value):
    """As Jinja's int filter reads a setting: a number, else 0."""
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return 0


def problems(host, nofile_soft, nofile_hard, assets_source, device, devices, environment, runtime, fact, extra_env,
             token_keys, env_file, hub_token_file):
    """fact is the host's ansible_local.sophon (the libsophon role's device fact), {} when there is none."""
    out = []
    bad_values = [key for key, value in environment.items() if not PLAIN_VALUE.match(str(value))]
    if (_int(nofile_soft) < 1024 or _int(nofile_hard) < _int(nofile_soft) or assets_source not in ("bundle", "hub")
            or not (device == "cpu" or device in devices) or bad_values):
        out.append("sophon_host_env settings on %s are not usable: open files soft %s / hard %s (need 1024 <= soft <= "
                   "hard); assets source '%s' (bundle or hub); device '%s' (cpu or one of %s); %s."
                   % (host, nofile_soft, nofile_hard, assets_source, device, ", ".join(devices) or "no chips found",
                      ("values with spaces, quotes, $ or backslashes, which the env file cannot carry: "
                       + ", ".join(bad_values)) if bad_values else "values fine"))
    # A Sophgo server whose chips are not usable now (unseated card, driver not loaded) must not quietly become a
    # CPU host: its runs would take weeks instead of hours, and the doctor would call it healthy.
    if runtime != "none" and not devices:
        faulted = [chip["device"] for chip in fact.get("chips") or [] if not chip.get("usable")]
        out.append("%s is to run on its BM1684X chips (SOPHON_SD_RUNTIME=sophgo) but none is usable. Found: %s usable "
                   "chip(s); device nodes: %s; faulted: %s. Check the cards (lspci -d 1f1c:) and the driver (lsmod | "
                   "grep bmsophon) and rerun, or provision the host without chips: sophon_sd_sophgo_runtime: false."
                   % (host, fact.get("chip_count", "no device fact (run the libsophon role first)"),
                      ", ".join(fact.get("dev_nodes") or []) or "no /dev/bm-sophon*", ", ".join(faulted) or "none"))
    tokens = [key for key in extra_env if key in token_keys]
    if tokens:
        out.append("sophon_host_env_extra_env on %s sets %s, which would put a token in %s (mode 0644) and in every "
                   "login shell: set sophon_host_env_hub_token instead (from a vault); it goes to %s, 0640."
                   % (host, ", ".join(tokens), env_file, hub_token_file))
    return out
