"""Whether a torch_tpu distribution is Sophgo's: the one rule the doctor and the sophon_torch_tpu role share.

PyPI's torch-tpu is Google's Cloud TPU backend, which cannot drive a BM1684X but imports as torch_tpu. Sophgo's
wheel names Sophgo in its author fields and ships the torch_tpu/tpu/ package; Google's has neither. Both are
required, so that a package that only borrows the name in its author line is not taken for Sophgo's.

Stdlib only, Python 3.6+: the doctor imports it on the host, and the role's Ansible module (through
roles/sophon_torch_tpu/module_utils, a link to this file) runs it under the kit venv's and the control node's
Python.
"""

SOPHGO_MARKER = "sophgo"
# Where a wheel's METADATA may name its maker (Sophgo's wheels have used Author; others use the -email forms).
AUTHOR_FIELDS = ("Author", "Author-email", "Maintainer", "Maintainer-email")
TPU_PACKAGE = "torch_tpu/tpu/"


def authors(meta) -> str:
    """The author and maintainer fields of a METADATA message (email.message.Message or importlib's), joined."""
    values = []
    for field in AUTHOR_FIELDS:
        values.extend(meta.get_all(field) or [])
    return " ".join(values).strip()


def has_tpu_package(files) -> bool:
    """Whether a distribution's files (wheel member names or RECORD paths) include the torch_tpu/tpu/ package."""
    return any(str(name).replace("\\", "/").startswith(TPU_PACKAGE) for name in files)


def is_sophgo_torch_tpu(author: str, has_tpu: bool, marker: str = SOPHGO_MARKER) -> bool:
    """Sophgo's torch_tpu: its author fields name the marker and it has the torch_tpu/tpu/ package."""
    return bool(has_tpu) and marker.lower() in (author or "").lower()
