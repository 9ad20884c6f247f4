"""Filters for train.yml's check of SLURM_ARGS on the control node, from the job tool's own rule
(runners/sdkit_slurm.py SITE_OPTIONS and site_args), which checks them again on each host: the allowed sbatch
options have that one home.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "runners"))
import sdkit_slurm  # noqa: E402  pylint: disable=wrong-import-position


def slurm_args_ok(text: Any) -> bool:
    """Whether SLURM_ARGS holds only the site's options, each --name=value, as the job tool will accept them."""
    try:
        sdkit_slurm.site_args(str(text))
    except sdkit_slurm.SlurmError:
        return False
    return True


def slurm_site_options(_: Any = None) -> str:
    """The allowed options as the message lists them: '--partition=, --account=, ... or --reservation='."""
    names = [f"{option}=" for option in sdkit_slurm.SITE_OPTIONS]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


class FilterModule:  # pylint: disable=too-few-public-methods
    """sdkit_slurm_args_ok and sdkit_slurm_site_options."""

    def filters(self) -> Dict[str, Callable[..., Any]]:
        return {"sdkit_slurm_args_ok": slurm_args_ok, "sdkit_slurm_site_options": slurm_site_options}
