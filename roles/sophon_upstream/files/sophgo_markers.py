"""sophgo_markers.py [--check] [--site DIR] NAME=VERSION ...: mark the kit's patched libraries the way Sophgo's
tool expects, and print {"changed": [paths written or to write]} as JSON.

torch_tpu's tpu_apply_all_patch (torch_tpu/utils/apply_revert_patch.py) takes <location>/<NAME>/sophgo.py,
where <location> is the folder of the installed distribution's metadata, to mean "NAME is already patched
for Sophgo". Without it, it runs `patch -p3` over the kit's edits, which fails; on an editable install that
folder does not even exist and it stops with FileNotFoundError. Run with the venv's interpreter; a NAME not
installed at VERSION is left alone (Sophgo's tool does the same).
"""

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

# The first line says who wrote the marker, so that the doctor can tell it from Sophgo's own.
KIT_LINE = "# sophon-sd-kit: this {name} is managed by the kit; Sophgo's tpu_apply_all_patch must leave it alone."
WHY = {
    "accelerate": "# The kit's patches/accelerate/<tag>/*.patch give the edits of Sophgo's accelerate-Sophgo.patch.",
    "transformers": ("# transformers-Sophgo.patch changes only TrainingArguments (Trainer's device choice and fp16\n"
                     "# check). The kit's peft flow trains with accelerate, not Trainer, so the kit does not apply it."),
}


def marker_text(name: str) -> str:
    return "\n".join([KIT_LINE.format(name=name), WHY.get(name, "# The kit applies its own edits."), ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("libraries", nargs="*", metavar="NAME=VERSION", help="Sophgo's patched libraries, as pinned")
    parser.add_argument("--check", action="store_true", help="report what would be written, write nothing")
    parser.add_argument("--site", help="look for the distributions only in this folder (tests)")
    args = parser.parse_args()
    changed = []
    for spec in args.libraries:
        name, _, version = spec.partition("=")
        try:
            dist = next(iter(metadata.distributions(name=name, path=[args.site] if args.site else sys.path)))
        except StopIteration:
            continue
        if dist.version != version:
            continue
        marker = Path(str(dist.locate_file(""))) / name / "sophgo.py"
        text = marker_text(name)
        if marker.is_file() and marker.read_text() == text:
            continue
        changed.append(str(marker))
        if not args.check:
            marker.parent.mkdir(mode=0o755, exist_ok=True)
            marker.write_text(text)
            marker.chmod(0o644)
    print(json.dumps({"changed": changed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
