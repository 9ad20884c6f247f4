"""Shared set-up for the unit tests of the roles' check modules (roles/*/module_utils, roles/*/library).

Their logic is importable without Ansible: each role's module_utils folder and runners/ (the rules the doctor
shares with the roles) go on sys.path, and the tests call the functions the modules call. The same messages
as the roles print are asserted here, in full, so that a change of wording is a test change.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
for _folder in sorted((REPO / "roles").glob("*/module_utils")) + [REPO / "runners", REPO / "tests" / "standins"]:
    sys.path.insert(0, str(_folder))
