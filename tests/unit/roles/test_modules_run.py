"""The roles' check modules and action plugins run under Ansible (argument specs, module_utils packaging, the
interpreter choices) against this machine, in seconds: one play on localhost, each result written as JSON.

Needs the control node's .venv (ansible-core); skipped where it is not built. The messages themselves are asserted
by the other tests here; this asserts that each module returns them through Ansible.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import make_git_archive
import make_wheel
import pytest

REPO = Path(__file__).resolve().parents[3]
PLAYBOOK = REPO / ".venv" / "bin" / "ansible-playbook"
PIN = "1" * 40
ROLES = ("sophon_torch_tpu", "sophon_assets", "sophon_bundle", "sophon_upstream", "sophon_venv", "sophon_host_env", "sophon_libsophon", "sophon_slurm",
         "sophon_apt")

PLAY = """
- hosts: localhost
  gather_facts: false
  vars:
    ansible_python_interpreter: {python}
    facts: {{os_family: Debian, distribution: Debian, distribution_version: "12", architecture: x86_64}}
    pins: {{python_version: "{pyver}", torch_version: 2.13.0, constraints: c.txt, profile: p, profile_dir: /k/p}}
    control: {{constraints_src: /k/c.txt, constraints_found: true, package_source: wheelhouse, wheelhouse_src: /k/w.tar,
              wheelhouse_found: true, index_url: ""}}
  tasks:
    - name: The torch_tpu check under a venv's Python, with a wheel for another torch
      sophon_torch_tpu_check:
        wheel: {wheel}
        wheel_name: {wheel_name}
        vendor_dir: /v
        venv: {venv}
        host: h1
      vars:
        ansible_python_interpreter: {venv}/bin/python
      register: torch_tpu
    - name: The torch_tpu check where the venv's Python does not run
      sophon_torch_tpu_check: {{wheel: /no.whl, wheel_name: no.whl, vendor_dir: /v, venv: /nowhere, host: h1}}
      vars:
        ansible_python_interpreter: /nowhere/bin/python
      register: torch_tpu_broken
      failed_when: false
    - name: The torch_tpu preflight on a missing wheel
      sophon_torch_tpu_preflight:
        wheel: {tmp}/vendor/{wheel_name}
        sha256: ""
        version: 2.1.0.post1
        python_tag: cp311
        torch_version: ""
        profile_torch: 2.13.0
        profile: p
        profile_dir: /k/p
        stats: [{{sophon_torch_tpu_item: "{tmp}/vendor/{wheel_name}", stat: {{exists: false}}}}]
        metadata: []
      register: torch_tpu_preflight
    - name: The upstream check with an archive missing on the control node
      sophon_upstream_check:
        src_dir: {tmp}/src
        source: bundle
        libraries: [{{name: diffusers, version: "0.20.0", sha256: "ab", tag: v0.20.0, commit: ""}}]
        bundle_dir: /b
        archives_on_control_node: []
      register: upstream
    - name: The upstream check with a git archive of another commit than the pin
      sophon_upstream_check:
        src_dir: {tmp}/src
        source: bundle
        libraries: [{{name: diffusers, version: "0.29.2", sha256: "ab", tag: v0.29.2, commit: "{pin}"}}]
        bundle_dir: /b
        archives_on_control_node: [diffusers-0.29.2.git.tar.gz]
        manifest_sources: {{"sources/diffusers-0.29.2.git.tar.gz": "{git_sha}"}}
      register: upstream_git
    - name: The question to a git source that is not there
      sophon_upstream_remote: {{url: "file://{tmp}/nowhere.git", tag: v1.0, commit: "{pin}", host: h1}}
      register: upstream_remote
    - name: The venv check with an interpreter that is not there
      sophon_venv_check:
        {{host: h1, facts: "{{{{ facts }}}}", python: /nowhere/python3, venv: {tmp}/venv, root: {tmp}/root,
         min_free_mb: 1, pins: "{{{{ pins }}}}", control_node: "{{{{ control }}}}"}}
      register: venv
    - name: The host_env check with a token in extra_env
      sophon_host_env_check:
        {{nofile_soft: 65535, nofile_hard: 65535, assets_source: hub, device: cpu, devices: [], env_values: {{A: x}},
         runtime: none, fact: {{}}, extra_env: {{HF_TOKEN: secret}}, token_keys: [HF_TOKEN], env_file: /e,
         hub_token_file: /t}}
      register: host_env
    - name: The libsophon preflight on an unsupported platform
      sophon_libsophon_preflight:
        {{platform: Debian 11, architecture: x86_64, supported_platforms: [Debian 12], supported_architectures: [x86_64],
         version: 0.4.9, files: [], found: {{}}, vendor_dir: {tmp}, driver_enabled: true}}
      register: libsophon
    - name: The Slurm cluster check with bm-b left out of the run, known from the controller's record
      sophon_slurm_cluster:
        controller_group: slurm_controller
        compute_group: slurm_compute
        controllers: [ctl]
        compute_hosts: [bm-a, bm-b]
        play_hosts: [ctl, bm-a]
        hosts:
          ctl: {{name: ctl, addr: 10.0.0.1, cpus: 2, memory_mb: 900, claimed: 0, usable: [], dev_nodes: [], user: ""}}
          bm-a: {{name: bm-a, addr: 10.0.0.2, cpus: 8, memory_mb: 15000, claimed: 1, usable: [0], dev_nodes: [], user: "9:9"}}
        user: sophon-sd
        munge_key_file: {tmp}/no-munge.key
        munge_key_min_bytes: 32
        record: "{{{{ recorded | to_json | b64encode }}}}"
        record_path: /etc/slurm/sophon-sd-nodes.json
      vars:
        recorded: {{nodes: {{bm-b: {{name: bm-b, addr: 10.0.0.3, cpus: 8, memory_mb: 15000, chips: [0, 2], user: "9:9"}}}}}}
      register: slurm_cluster
    - name: The apt check of a repository built for another release, for a host with mirror transport and no mirror
      sophon_apt_bundle_check:
        {{bundle_dir: {tmp}/apt, signing_key: {tmp}/apt/key.asc, distribution_release: trixie, architecture: x86_64,
         transport: mirror, mirror_url: ""}}
      register: apt
    - name: The assets check of a folder without its checksum list
      sophon_assets_sums: {{folder: "{tmp}", items: [dataset]}}
      register: assets
    - name: The bundle guard, for a host whose last bundle is newer than the verified one
      sophon_bundle_guard:
        manifest: "{tmp}/manifest.yml"
        bundle_dir: "{tmp}"
        verified: {{sha256: "{manifest_sha}", serial: 6}}
        serial_file: "{tmp}/bundle-serial"
      register: bundle_older
    - name: The bundle guard, for a host that never got a bundle
      sophon_bundle_guard:
        manifest: "{tmp}/manifest.yml"
        bundle_dir: "{tmp}"
        verified: {{sha256: "{manifest_sha}", serial: 6}}
        serial_file: "{tmp}/no-serial"
      register: bundle_first
    - name: Write the results
      ansible.builtin.copy:
        content: "{{{{ dict(torch_tpu=torch_tpu, torch_tpu_broken=torch_tpu_broken, torch_tpu_preflight=torch_tpu_preflight,
                           upstream=upstream, upstream_git=upstream_git, upstream_remote=upstream_remote, venv=venv, host_env=host_env, libsophon=libsophon,
                           slurm_cluster=slurm_cluster, apt=apt, assets=assets,
                           bundle_older=bundle_older, bundle_first=bundle_first) | to_json }}}}"
        dest: {tmp}/results.json
        mode: "0644"
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    if not PLAYBOOK.exists():
        pytest.skip("no .venv with ansible-core (make setup builds it)")
    tmp = tmp_path_factory.mktemp("modules")
    (tmp / "vendor").mkdir()
    (tmp / "apt").mkdir()
    (tmp / "apt" / "release.yml").write_text("codename: bookworm\narchitecture: amd64\n")
    (tmp / "apt" / "key.asc").write_text("key")
    (tmp / "apt.tar").write_bytes(b"")
    wheel = make_wheel.sophgo(tmp, "cp%d%d" % sys.version_info[:2], "2.8.0", "2.1.0.post1")
    commit, git_sha = make_git_archive.make(tmp, tmp / "src/.archives/diffusers-0.29.2.git.tar.gz", "diffusers", "0.29.2")
    (tmp / "commit").write_text(commit)
    (tmp / "manifest.yml").write_text("serial: 6\n")
    (tmp / "bundle-serial").write_text("7\n")
    manifest_sha = hashlib.sha256(b"serial: 6\n").hexdigest()
    (tmp / "play.yml").write_text(PLAY.format(
        python=sys.executable, pyver="%d.%d" % sys.version_info[:2], wheel=wheel, wheel_name=wheel.name,
        venv=Path(sys.prefix), tmp=tmp, pin=PIN, git_sha=git_sha, manifest_sha=manifest_sha))
    (tmp / "ansible.cfg").write_text("[defaults]\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(tmp / "ansible.cfg"),
           "ANSIBLE_LIBRARY": ":".join(str(REPO / "roles" / role / "library") for role in ROLES),
           "ANSIBLE_MODULE_UTILS": ":".join(str(REPO / "roles" / role / "module_utils") for role in ROLES),
           "ANSIBLE_ACTION_PLUGINS": ":".join(str(REPO / "roles" / role / "action_plugins") for role in ROLES)}
    run = subprocess.run([str(PLAYBOOK), "-i", "localhost,", "-c", "local", str(tmp / "play.yml")], env=env,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return {**json.loads((tmp / "results.json").read_text()), "commit": (tmp / "commit").read_text(),
            "output": run.stdout + run.stderr, "tmp": str(tmp)}


def test_torch_tpu_check_runs_under_the_venvs_python(results):
    found = results["torch_tpu"]
    assert found["python"]["prefix"] == sys.prefix and found["torch"] and found["wheel"]["vendor"]
    assert found["changed"] is False and len(found["problems"]) == 1
    assert "is built for torch 2.8.0 (its Requires-Dist), but the venv\n" in found["problems"][0]


def test_a_venv_python_that_does_not_run_leaves_no_problems_for_the_role_to_explain(results):
    broken = results["torch_tpu_broken"]
    assert "problems" not in broken and "/nowhere/bin/python" in broken["msg"]


def test_the_other_checks_return_their_problems(results):
    assert results["torch_tpu_preflight"]["problems"][0].startswith("Missing on the control node: ")
    assert results["upstream"]["problems"] == [
        "/b/diffusers-0.20.0.tar.gz is missing on the control node. Run `make wheelhouse` (it also downloads the source "
        "archives) and rerun."]
    assert results["upstream_git"]["found"]["diffusers"]["archive_commit"] == results["commit"]
    assert results["upstream_git"]["marker_file"] == ".sophon-sd-archive.json"
    assert results["upstream_git"]["problems"] == [
        f"diffusers-0.29.2.git.tar.gz was made from commit {results['commit']}, not diffusers v0.29.2's pinned "
        f"commit {PIN} (the tag moved, or the bundle was built from another repository). Rebuild the bundle (make "
        "bundle) from a repository whose tag is at the pin, or correct the pin in the profile, and rerun."]
    assert results["upstream_remote"]["problem"].startswith("Cannot reach file://") and \
        results["upstream_remote"]["tag_commit"] == ""
    assert results["assets"]["problems"] == [f"{results['tmp']}/SHA256SUMS is missing. Put the download share's "
                                             f"folders (dataset) in {results['tmp']}, run `make assets-sums`, and rerun."]
    assert results["bundle_older"]["problems"][0].startswith("localhost: the bundle ") and \
        "has serial 6, older than serial 7" in results["bundle_older"]["problems"][0]
    assert results["bundle_older"]["changed"] is False
    assert results["bundle_first"] | {"problems": [], "serial": 6, "host_serial": 0, "changed": True} == \
        results["bundle_first"]
    assert results["venv"]["python"] is None and results["venv"]["problems"][0].startswith(
        "/nowhere/python3 on h1 is missing, but the pins")
    assert results["host_env"]["problems"][0].startswith("sophon_host_env_extra_env on localhost sets HF_TOKEN,")
    assert "secret" not in json.dumps(results["host_env"])
    assert results["libsophon"]["problems"][0].startswith("localhost runs Debian 11 on x86_64;")


def test_the_apt_check_reads_the_repository_on_the_control_node(results):
    assert results["apt"]["changed"] is False
    assert [problem.split(",")[0] for problem in results["apt"]["problems"]] == [
        "localhost runs trixie/x86_64", "localhost: sophon_sd_bundle_transport is mirror"]


def test_the_slurm_cluster_check_reads_the_record_slurp_returns(results):
    """The record arrives base64, as slurp returns it, and a compute host left out keeps its node line."""
    found = results["slurm_cluster"]
    assert found["changed"] is False
    assert [(node["name"], node["chips"]) for node in found["nodes"]] == [("bm-a", [0]), ("bm-b", [0, 2])]
    # Shown as Ansible's warning, not only registered: the operator sees which host was left out.
    assert "bm-b in group slurm_compute is not in this run" in found["warnings"][0]
    assert "bm-bingroupslurm_computeisnotinthisrun" in "".join(results["output"].split())  # wrapped by Ansible
    [problem] = found["problems"]
    assert problem.startswith("The cluster's munge key ") and "/no-munge.key (sophon_slurm_munge_key_file)" in problem
