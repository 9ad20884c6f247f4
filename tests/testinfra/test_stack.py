"""The training stack on a provisioned host: venv, pinned libraries, patches."""

import json

import pytest
from conftest import REPO, not_roots, patch_changed_lines

# roles/sophon_upstream/module_utils/sophon_upstream_checks.py MARKER: written into a tree unpacked from a git archive.
GIT_ARCHIVE_MARKER = ".sophon-sd-archive.json"

IMPORT_PROBE = (
    "import json, torch, diffusers, transformers, accelerate;"
    "print(json.dumps({m.__name__: [m.__version__, m.__file__]"
    " for m in (torch, diffusers, transformers, accelerate)}))"
)


def test_venv_imports_pinned_libraries_from_the_checkouts(host, venv_python, sources_manifest, pinned_libraries):
    imported = json.loads(host.check_output(f"{venv_python} -c '{IMPORT_PROBE}'"))
    for name, pin in pinned_libraries.items():
        version, module_file = imported[name]
        assert version == str(pin["version"])
        assert module_file.startswith(f"{sources_manifest['src_dir']}/{name}/"), f"{name} not from its checkout"


def test_venv_matches_the_constraints_file(host, venv_python):
    """Every package the constraints file pins is installed at exactly that version (torch included)."""
    pins = {}
    for line in host.file("/opt/sophon-sd/constraints.txt").content_string.splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    installed = {
        pkg["name"].lower().replace("_", "-"): pkg["version"].split("+")[0]
        for pkg in json.loads(host.check_output(f"{venv_python} -m pip list --format json"))
    }
    assert "torch" in pins
    assert {name: installed.get(name) for name in pins} == pins


def test_pip_check_passes(host, venv_python):
    result = host.run(f"{venv_python} -m pip check")
    assert result.rc == 0, result.stdout


def test_patched_regions_are_present(host, sources_manifest):
    applied = [p for p in sources_manifest["patches"] if p["applied"]]
    assert any(p["library"] == "accelerate" for p in applied), "the accelerate patch applies in every mode"
    for patch in applied:
        target = host.file(f"{sources_manifest['src_dir']}/{patch['library']}/{patch['file']}").content_string
        added = [line[1:] for line in patch_changed_lines((REPO / "patches" / patch["patch"]).read_text())
                 if line.startswith("+")]
        missing = [line for line in added if line not in target.splitlines()]
        assert not missing, f"{patch['patch']}: lines missing from {patch['file']}"


def test_skipped_patches_lack_their_file(host, sources_manifest):
    for patch in sources_manifest["patches"]:
        if not patch["applied"]:
            assert not host.file(f"{sources_manifest['src_dir']}/{patch['library']}/{patch['file']}").exists


@pytest.mark.parametrize("library", ["transformers", "accelerate", "diffusers"])
def test_checkout_differs_from_upstream_by_exactly_the_patches(host, sources_manifest, library):
    src = f"{sources_manifest['src_dir']}/{library}"
    if sources_manifest["source"] == "git":
        status = host.check_output(f"git -C {src} status --porcelain --untracked-files=no")
        changed_files = sorted(line[3:] for line in status.splitlines())
        diff = host.check_output(f"git -C {src} diff --no-color --no-ext-diff")
    else:
        # The pristine archive stays on the host (the tag's git archive, or the sdist); compare the tree against a
        # fresh unpack of it. The kit's marker in a git archive's tree is its only other file.
        lib = next(item for item in sources_manifest["libraries"] if item["name"] == library)
        archive_name = sources_manifest.get("archives", {}).get(library, f"{library}-{lib['version']}.tar.gz")
        archive = f"{sources_manifest['src_dir']}/.archives/{archive_name}"
        diff = host.run(
            f"d=$(mktemp -d) && tar -C $d --strip-components=1 -xzf {archive} && "
            f"diff -ruN -x '*.egg-info' -x __pycache__ -x {GIT_ARCHIVE_MARKER} $d {src}; rc=$?; rm -rf $d; exit $rc"
        ).stdout
        changed_files = sorted(
            line[4:].split("\t")[0][len(src) + 1:] for line in diff.splitlines() if line.startswith("+++ ")
        )
    # In path order, as both diffs list files (a profile lists its patches in the order they apply).
    applied = sorted((p for p in sources_manifest["patches"] if p["applied"] and p["library"] == library),
                     key=lambda p: p["file"])
    assert changed_files == [p["file"] for p in applied]
    expected = [line for p in applied for line in patch_changed_lines((REPO / "patches" / p["patch"]).read_text())]
    assert patch_changed_lines(diff) == expected


def test_whole_kit_root_is_roots_and_writable_by_root_only(host, sources_manifest):
    """Sources, venv, runners, vendor files: an sdist unpacked with its maker's 1000:1000 and 0664 let
    whoever had that uid edit code that every job imports and root reinstalls (issue 21, item 2)."""
    assert sources_manifest["source"] in ("git", "bundle")
    assert not_roots(host) == [], f"{sources_manifest['source']} host"
