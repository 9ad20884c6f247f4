"""The kit's Debian packages have one home, data/apt-packages.yml: the roles install its lists and make bundle
bundles them (issue 22). The bundle tool used to collect them by walking the roles' defaults and task YAML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools"))
import sdkit_bundle  # noqa: E402

# Each role's list, as the role's tasks see it.
ROLE_LISTS = {"sophon_venv": ["sophon_venv_apt_packages"], "sophon_upstream": ["sophon_upstream_apt_packages"],
              "sophon_runners": ["sophon_runners_apt_packages"], "sophon_mirror": ["sophon_mirror_apt_packages"],
              "sophon_libsophon": ["sophon_libsophon_apt_packages", "sophon_libsophon_driver_apt_packages"],
              "sophon_slurm": ["sophon_slurm_apt_packages", "sophon_slurm_controller_apt_packages",
                               "sophon_slurm_compute_apt_packages", "sophon_slurm_accounting_apt_packages"]}


def roles_lists(tmp_path: Path) -> dict[str, list[str]]:
    """Every role's *_apt_packages, evaluated by Ansible inside a role (as the roles' tasks evaluate them), in a
    stand-in role laid out as the kit's are (roles/<name>/, beside a data/ that is the kit's)."""
    probe = tmp_path / "roles" / "probe" / "tasks"
    probe.mkdir(parents=True)
    (tmp_path / "data").symlink_to(REPO / "data")
    out = tmp_path / "lists.json"
    names = [name for lists in ROLE_LISTS.values() for name in lists]
    content = "{{ {" + ", ".join(f"'{name}': {name}" for name in names) + "} | to_json }}"
    (probe / "main.yml").write_text(yaml.safe_dump([{"name": "Write the lists", "ansible.builtin.copy": {
        "content": content, "dest": str(out), "mode": "0644"}}]))
    playbook = tmp_path / "lists.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Lists", "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}", "ansible_facts": {"kernel": "6.1.0-9"}},
        "roles": [{"role": "sophon_sd"}] + [{"role": role, "when": False} for role in ROLE_LISTS] + [{"role": "probe"}]}]))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": f"{tmp_path / 'roles'}:{REPO / 'roles'}"}
    result = subprocess.run(["ansible-playbook", "-i", "localhost,", str(playbook)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(out.read_text())


def test_roles_install_and_the_bundle_bundles_the_one_list(tmp_path):
    data = yaml.safe_load((REPO / "data" / "apt-packages.yml").read_text())
    lists = roles_lists(tmp_path)
    assert lists["sophon_venv_apt_packages"] == data["venv"] == ["python3-venv", "python3-packaging"]
    assert lists["sophon_slurm_compute_apt_packages"] == data["slurm_compute"]
    # The driver's headers follow the host's kernel: added by the role, never bundled.
    assert lists["sophon_libsophon_driver_apt_packages"] == data["libsophon_driver"] + ["linux-headers-6.1.0-9"]
    installed = {name for names in lists.values() for name in names}
    assert set(sdkit_bundle.apt_packages(with_driver=True)) == installed - {"linux-headers-6.1.0-9"}
    assert set(sdkit_bundle.apt_packages(with_driver=False)) == installed - set(lists["sophon_libsophon_driver_apt_packages"])
