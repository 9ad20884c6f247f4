"""Fleet report: at the end of a run, one line per host that failed or could not be reached.

Ansible's recap counts failures per host; on a fleet the reason is scrolled far away. This
callback keeps the failure (task and message) or unreachable error that stopped each host, and prints
them together after the recap, so an operator sees which hosts to fix and why without searching.

It also shows progress while a task polls with until/retries: when a retry's output is a JSON object
with `lines`, those lines are printed for the host, where Ansible itself only says how many retries are
left. (train.yml's poll is a play in rounds instead, which prints each host's lines with a debug task.)

Both come from the hosts, so both go through sdkit_files.printable first: an escape sequence in a
job's name or a failure message would otherwise reach the operator's terminal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DOCUMENTATION = """
    name: sophon_fleet_report
    type: aggregate
    short_description: Name each failed or unreachable host and why, at the end of the run
    description:
      - Collects the failure or unreachable error that stopped each host and prints them after the recap.
      - Failures that a task ignores (ignore_errors, or rescued by a block) are not reported.
    requirements:
      - enable in ansible.cfg (callbacks_enabled)
"""

from ansible.plugins.callback import CallbackBase

# The runners' stdlib-only helpers (as tools/sdkit_report.py uses them).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runners"))
from sdkit_files import printable  # noqa: E402

MESSAGE_LIMIT = 300


def summarize(result: dict) -> str:
    """The one line an operator needs from a failed task's result."""
    message = result.get("msg") or result.get("stderr") or ""
    # A command that failed says only "non-zero return code"; its stderr says why (the job tool's one line).
    if result.get("stderr") and message != result["stderr"]:
        message = f"{message}: {result['stderr']}"
    # A module that crashed says only that its output was not JSON; its stderr says why.
    module_error = next((line for line in str(result.get("module_stderr", "")).splitlines() if line.strip()), "")
    # A loop says only that an item failed; the first failed item says why.
    failed_item = next((item for item in result.get("results", []) if isinstance(item, dict) and item.get("failed")), None)
    detail = module_error or (summarize(failed_item) if failed_item else "")
    if detail:
        message = f"{message}: {detail}" if message else detail
    message = " ".join(printable(message).split())
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 3] + "..."


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "sophon_fleet_report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.problems: dict[str, tuple[str, str, str]] = {}

    def _record(self, kind: str, result) -> None:
        # A failed host runs no further tasks, so its last failure is the one that stopped it; an
        # earlier one was handled by a rescue block (and the host then counts as completed).
        self.problems[result._host.get_name()] = (kind, result._task.get_name(), summarize(result._result))

    def v2_runner_on_failed(self, result, ignore_errors: bool = False) -> None:
        if not ignore_errors:
            self._record("FAILED", result)

    def v2_runner_on_unreachable(self, result) -> None:
        self._record("UNREACHABLE", result)

    def v2_runner_retry(self, result) -> None:
        try:
            progress = json.loads(result._result.get("stdout") or "")
        except ValueError:
            return
        if isinstance(progress, dict) and isinstance(progress.get("lines"), list):
            host = result._host.get_name()
            for line in progress["lines"]:
                self._display.display(f"  [{host}] {printable(line)}")

    def v2_runner_item_on_failed(self, result) -> None:
        # Items are summed up by v2_runner_on_failed for the whole loop; nothing to do per item.
        pass

    def v2_playbook_on_stats(self, stats) -> None:
        # Failures rescued by a block count as "rescued", not as failed hosts.
        failed_hosts = {host for host in stats.processed
                        if stats.summarize(host)["failures"] or stats.summarize(host)["unreachable"]}
        reported = {host: problem for host, problem in self.problems.items() if host in failed_hosts}
        # The control node's own checks (plays on localhost) are not a fleet host unless they failed.
        fleet = [host for host in stats.processed if host != "localhost" or host in reported]
        if not fleet:
            return
        ok_count = len(fleet) - len(reported)
        self._display.banner("FLEET REPORT")
        self._display.display(f"{ok_count} of {len(fleet)} hosts completed.")
        for host, (kind, task, message) in sorted(reported.items()):
            self._display.display(f"{host}: {kind} at \"{task}\": {message}", color="red")
        if reported:
            self._display.display("Fix the hosts above and rerun; the completed hosts will report no changes.")
