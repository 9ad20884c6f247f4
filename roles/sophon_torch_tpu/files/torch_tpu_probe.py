"""Reports, as one JSON object, what the sophon_torch_tpu role must know before it installs anything.

Run with the kit's venv Python: ``probe.py VENDOR_MARKER [WHEEL]``. Imports nothing heavy (no torch,
no torch_tpu): versions come from package metadata, the wheel is read as a zip.

  python:     the venv's interpreter (version, CPython tag, machine)
  torch:      the installed torch version, or null
  installed:  the installed torch_tpu/torch-tpu distribution (version, author, has torch_tpu/tpu/,
              whether it is the vendor's, location), or null
  wheel:      the wheel's name, version, author, tags, torch requirement, whether it has
              torch_tpu/tpu/ and is the vendor's, and whether its tags fit this interpreter
"""

import json
import platform
import re
import sys
import zipfile
from email.parser import Parser

try:
    from importlib import metadata
except ImportError:  # pragma: no cover - Python < 3.8 is not a kit target
    metadata = None


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _authors(meta):
    values = []
    for field in ("Author", "Author-email", "Maintainer", "Maintainer-email"):
        values.extend(meta.get_all(field) or [])
    return " ".join(values).strip()


def _torch_requirement(requires):
    for req in requires or []:
        match = re.match(r"^\s*torch\s*(\(?\s*(?P<spec>[^;)]*)\)?)?\s*(;.*)?$", req)
        if match:
            spec = (match.group("spec") or "").strip()
            pin = re.fullmatch(r"===?\s*([0-9][^,\s]*)", spec)
            return spec, (pin.group(1) if pin else None)
    return None, None


def _is_vendor(author, has_tpu, marker):
    return has_tpu and marker.lower() in author.lower()


def installed_dist(marker):
    if metadata is None:
        return None
    for dist in metadata.distributions():
        name = dist.metadata.get("Name") or ""
        if _norm(name) != "torch-tpu":
            continue
        files = [str(f) for f in (dist.files or [])]
        has_tpu = any(f.replace("\\", "/").startswith("torch_tpu/tpu/") for f in files)
        author = _authors(dist.metadata)
        location = str(dist.locate_file("")) if hasattr(dist, "locate_file") else None
        return {
            "name": name,
            "version": dist.version,
            "author": author,
            "summary": dist.metadata.get("Summary") or "",
            "has_tpu": has_tpu,
            "vendor": _is_vendor(author, has_tpu, marker),
            "location": location,
        }
    return None


def wheel_info(path, python_tag, marker):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        dist_info = sorted({n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")})
        if not dist_info:
            raise ValueError("no .dist-info folder: not a wheel")
        meta = Parser().parsestr(archive.read(dist_info[0] + "/METADATA").decode("utf-8", "replace"))
        wheel = Parser().parsestr(archive.read(dist_info[0] + "/WHEEL").decode("utf-8", "replace"))
    tags = wheel.get_all("Tag") or []
    spec, pin = _torch_requirement(meta.get_all("Requires-Dist"))
    has_tpu = any(n.startswith("torch_tpu/tpu/") for n in names)
    author = _authors(meta)
    machine = platform.machine()
    fits = []
    for tag in tags:
        interp, abi, plat = (tag.split("-") + ["", "", ""])[:3]
        interp_ok = any(t in (python_tag, "py3", "py%d" % sys.version_info[0], "py%d%d" % sys.version_info[:2])
                        for t in interp.split("."))
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
        "vendor": _is_vendor(author, has_tpu, marker),
        "libs": sorted(n for n in names if re.match(r"^torch_tpu/lib/[^/]+\.so", n)),
    }


def main():
    marker = sys.argv[1] if len(sys.argv) > 1 else "sophgo"
    wheel_path = sys.argv[2] if len(sys.argv) > 2 else None
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
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
