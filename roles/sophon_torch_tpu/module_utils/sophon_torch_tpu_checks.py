"""What the sophon_torch_tpu role must know before it installs anything, and what stops it.

Imported by the role's modules (library/sophon_torch_tpu_check.py on the host, under the kit venv's Python,
and on the control node for the preflight) and by the unit tests (tests/unit/roles/sophon_torch_tpu). Imports
nothing heavy (no torch, no torch_tpu): versions come from package metadata, the wheel is read as a zip.
Stdlib only, Python 3.6+.

Each message names the host, the file, the variable and the fix; the role's tests assert their text.
"""

import platform
import re
import sys
import zipfile
from email.parser import Parser

try:
    from importlib import metadata
except ImportError:  # pragma: no cover - Python < 3.8 is not a kit target
    metadata = None

try:
    from ansible.module_utils.sdkit_wheel import authors, has_tpu_package, is_sophgo_torch_tpu
except ImportError:  # imported from runners/ by the doctor's and the unit tests' sys.path
    from sdkit_wheel import authors, has_tpu_package, is_sophgo_torch_tpu


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _torch_requirement(requires):
    for req in requires or []:
        match = re.match(r"^\s*torch\s*(\(?\s*(?P<spec>[^;)]*)\)?)?\s*(;.*)?$", req)
        if match:
            spec = (match.group("spec") or "").strip()
            pin = re.fullmatch(r"===?\s*([0-9][^,\s]*)", spec)
            return spec, (pin.group(1) if pin else None)
    return None, None


def installed_dist(marker):
    """The torch_tpu/torch-tpu distribution this Python sees, or None."""
    if metadata is None:
        return None
    for dist in metadata.distributions():
        name = dist.metadata.get("Name") or ""
        if _norm(name) != "torch-tpu":
            continue
        has_tpu = has_tpu_package(dist.files or [])
        author = authors(dist.metadata)
        location = str(dist.locate_file("")) if hasattr(dist, "locate_file") else None
        return {
            "name": name,
            "version": dist.version,
            "author": author,
            "summary": dist.metadata.get("Summary") or "",
            "has_tpu": has_tpu,
            "vendor": is_sophgo_torch_tpu(author, has_tpu, marker),
            "location": location,
        }
    return None


def wheel_info(path, python_tag, marker, machine=None, python_major_minor=None):
    """The wheel's name, version, author, tags, torch requirement, whether it is Sophgo's and fits this Python."""
    machine = machine or platform.machine()
    major, minor = python_major_minor or sys.version_info[:2]
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        dist_info = sorted({n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")})
        if not dist_info:
            raise ValueError("no .dist-info folder: not a wheel")
        meta = Parser().parsestr(archive.read(dist_info[0] + "/METADATA").decode("utf-8", "replace"))
        wheel = Parser().parsestr(archive.read(dist_info[0] + "/WHEEL").decode("utf-8", "replace"))
    tags = wheel.get_all("Tag") or []
    spec, pin = _torch_requirement(meta.get_all("Requires-Dist"))
    has_tpu = has_tpu_package(names)
    author = authors(meta)
    fits = []
    for tag in tags:
        interp, abi, plat = (tag.split("-") + ["", "", ""])[:3]
        interp_ok = any(t in (python_tag, "py3", "py%d" % major, "py%d%d" % (major, minor)) for t in interp.split("."))
        abi_ok = any(a in (python_tag, "abi3", "none") for a in abi.split("."))
        plat_ok = any(p == "any" or p.endswith("_" + machine) for p in plat.split("."))
        fits.append(interp_ok and abi_ok and plat_ok)
    return {
        "name": meta.get("Name") or "",
        "version": meta.get("Version") or "",
        "author": author,
        "summary": meta.get("Summary") or "",
        "tags": tags,
        "fits_python": any(fits),
        "torch_requirement": spec,
        "torch_pin": pin,
        "has_tpu": has_tpu,
        "vendor": is_sophgo_torch_tpu(author, has_tpu, marker),
        "libs": sorted(n for n in names if re.match(r"^torch_tpu/lib/[^/]+\.so", n)),
    }


def probe(marker, wheel_path=None):
    """What this Python (the kit venv's, when the module runs there) has, and what the wheel is."""
    python_tag = "cp%d%d" % sys.version_info[:2]
    report = {
        "python": {"version": "%d.%d" % sys.version_info[:2], "tag": python_tag, "machine": platform.machine(),
                   "prefix": sys.prefix},
        "torch": None,
        "installed": installed_dist(marker),
        "wheel": None,
        "wheel_error": None,
    }
    if metadata is not None:
        try:
            report["torch"] = metadata.version("torch")
        except metadata.PackageNotFoundError:
            pass
    if wheel_path:
        try:
            report["wheel"] = wheel_info(wheel_path, python_tag, marker)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            report["wheel_error"] = "%s: %s" % (wheel_path, exc)
    return report


def wheel_torch(wheel, torch_version=""):
    """The torch a wheel is for and where that comes from: the variable, else Requires-Dist: torch==X, else the
    wheel's own version without its .postN (Sophgo numbers torch_tpu after the torch it pairs with)."""
    if torch_version:
        return torch_version, "sophon_torch_tpu_torch_version"
    if wheel["torch_pin"]:
        return wheel["torch_pin"], "its Requires-Dist"
    return re.sub(r"\.post\d+$", "", wheel["version"]), "its version"


def host_problems(state, host, venv, wheel_name, vendor_dir, torch_version=""):
    """What stops the install on a host whose venv Python ran the probe; each check needs the ones before it."""
    out = []
    if state["torch"] is None:
        out.append("torch is not installed in %s on %s. torch_tpu is installed after torch, which the sophon_venv "
                   "role installs: run it first (playbooks/runtime.yml does)." % (venv, host))
    wheel = state["wheel"]
    if wheel is None:
        out.append("%s is not a readable wheel (%s). Replace it in %s with Sophgo's file and rerun."
                   % (wheel_name, state["wheel_error"], vendor_dir))
    elif not wheel["vendor"]:
        out.append("%s is not Sophgo's torch_tpu: it is %s %s by '%s' (%s torch_tpu/tpu/ package). PyPI's torch-tpu "
                   "is Google's Cloud TPU backend, which cannot drive a BM1684X. Put Sophgo's wheel "
                   "(torch_tpu-2.x.0.postN-cp3X-cp3X-linux_x86_64.whl from Sophgo's SDK download) in %s and rerun. "
                   "Nothing was installed."
                   % (wheel_name, wheel["name"], wheel["version"], wheel["author"] or "no author",
                      "has" if wheel["has_tpu"] else "no", vendor_dir))
    else:
        python = state["python"]
        if not wheel["fits_python"]:
            out.append("%s is built for %s, but the venv %s on %s runs Python %s (%s) on %s. Use Sophgo's torch_tpu "
                       "wheel for %s (sophon_torch_tpu_python_tag), or the Python this wheel is for "
                       "(sophon_venv_python_version and its profile). Nothing was installed."
                       % (wheel_name, ", ".join(wheel["tags"]), venv, host, python["version"], python["tag"],
                          python["machine"], python["tag"]))
        expected, source = wheel_torch(wheel, torch_version)
        torch = state["torch"]
        if torch is not None and torch.split("+")[0] != expected:
            # The line break is the old YAML message's (a more-indented line kept it), kept so that its text does
            # not change.
            out.append("%s is built for torch %s (%s), but the venv\n%s on %s has torch %s. Set "
                       "sophon_venv_torch_version to %s (with its profile), or use the torch_tpu wheel Sophgo built "
                       "for torch %s. Nothing was installed."
                       % (wheel_name, expected, source, venv, host, torch, expected, torch.split("+")[0]))
    return out


SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def preflight_problems(host, wheel_name, vendor_dir, exists, checksum, sha256, meta, version, python_tag,
                       torch_version, profile_torch, profile, profile_dir, other_wheels):
    """What stops a host before it changes, found on the control node: the wheel missing, its checksum unset or
    wrong, or a wheel built for another torch than the host's profile pins.

    meta is the wheel's metadata as wheel_info read it (None when unreadable: the host-side check explains
    that); other_wheels the torch_tpu wheels beside it, offered when the named one is missing."""
    path = "%s/%s" % (vendor_dir, wheel_name)
    sha256_set = bool(SHA256.match(sha256 or ""))
    out = []
    if not exists:
        found = ("Found instead: %s (set sophon_torch_tpu_version / sophon_torch_tpu_wheel if one of them is the "
                 "right one)." % ", ".join(other_wheels)) if other_wheels else ""
        # The space before an empty `found` is today's message's, kept so that its text does not change.
        out.append("Missing on the control node: %s. Put Sophgo's torch_tpu %s wheel for Python %s.%s there under "
                   "exactly that name (from Sophgo's SDK download page or the tutorial's download share; it is not "
                   "on PyPI, whose torch-tpu is Google's), set sophon_torch_tpu_sha256 and rerun. %s"
                   % (path, version, python_tag[2:3], python_tag[3:], found))
    if not sha256_set:
        out.append("sophon_torch_tpu_sha256 must be set to the sha256 that Sophgo publishes for %s (64 hex digits, "
                   "in group_vars). `sha256sum` shows what the file you have hashes to; only a published value "
                   "proves it is Sophgo's." % wheel_name)
    if exists and sha256_set and checksum.lower() != sha256.lower():
        out.append("Checksum mismatch: %s has sha256 %s, sophon_torch_tpu_sha256 says %s. Nothing was installed. "
                   "The file is corrupt, truncated or another build: download it again from Sophgo (or fix the "
                   "variable) and rerun." % (path, checksum, sha256))
    if exists and meta is not None and meta["vendor"]:
        wheel_torch_version, source = wheel_torch(meta, torch_version)
        if wheel_torch_version != profile_torch:
            # The line break is the old YAML message's, as in host_problems.
            out.append("%s: %s is built for torch %s (%s), but the host's\nprofile %s pins torch %s "
                       "(sophon_venv_torch_version, from %s/profile.yml). Put Sophgo's torch_tpu wheel for torch %s "
                       "there (and set sophon_torch_tpu_version, sophon_torch_tpu_sha256), or set sophon_sd_profile "
                       "to a profile with torch %s. Nothing was changed."
                       % (host, path, wheel_torch_version, source, profile, profile_torch, profile_dir,
                          profile_torch, wheel_torch_version))
    return out
