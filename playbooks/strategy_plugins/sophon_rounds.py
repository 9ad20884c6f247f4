"""Strategy ``sophon_rounds``: Ansible's linear strategy, with the play run again while its hosts ask for it.

Why: a poll of days-long jobs must print every host's progress each round and fetch each host's results
when its own jobs end. A task retried with until/retries holds one of Ansible's forks per host for the
whole loop, so with forks=20 hosts 21 to 100 were neither polled nor fetched until the first 20 hosts'
jobs ended. Ansible has no loop over several tasks that neither recurses (an include that includes
itself hit Python's recursion limit after about 246 rounds) nor grows (a looped include adds every
round's tasks for every host up front). This strategy runs the play's tasks as the linear strategy
does, one short task over all hosts at a time, then runs them again from the top, as long as a host of
the play has the fact ``sophon_rounds_again`` true: each round is a fresh pass over the same compiled
play, so memory and CPU per round stay flat whatever the round count.

Hosts that failed in a round stay failed (and out of the later plays), as in one linear pass. A task
that must keep polling an unreachable host sets ``ignore_unreachable``.
"""

from __future__ import annotations

from ansible.executor.play_iterator import PlayIterator
from ansible.plugins.strategy.linear import StrategyModule as LinearStrategy

DOCUMENTATION = """
    name: sophon_rounds
    short_description: Run the play's tasks in rounds while a host sets sophon_rounds_again
    description:
      - The linear strategy, repeated from the play's first task while any host of the play has the fact
        sophon_rounds_again true after a pass (set it with set_fact, run_once, on the last round to false).
      - Memory and CPU per round do not grow with the number of rounds.
    author: sophon-sd-kit
"""

AGAIN_FACT = "sophon_rounds_again"


class StrategyModule(LinearStrategy):
    def _again(self) -> bool:
        # set_fact keeps its facts here (run_once: on every host of the play); a host that failed has no say.
        facts = self._variable_manager._nonpersistent_fact_cache
        return any(bool(facts.get(host, {}).get(AGAIN_FACT)) for host in self._hosts_cache
                   if host not in self._tqm._failed_hosts and host not in self._tqm._unreachable_hosts)

    def run(self, iterator, play_context):  # type: ignore[override]
        play = iterator._play
        worst = int(self._tqm.RUN_OK)
        while True:
            result = super().run(iterator, play_context)
            if result != self._tqm.RUN_OK and not isinstance(result, bool):
                worst = result
            # The task queue manager records only its own iterator's failures: record each round's.
            for name in iterator.get_failed_hosts():
                self._tqm._failed_hosts[name] = True
            if self._tqm._terminated or iterator.end_play or result & self._tqm.RUN_FAILED_BREAK_PLAY \
                    or not self._again():
                return worst
            iterator = PlayIterator(inventory=self._inventory, play=play, play_context=play_context,
                                    variable_manager=self._variable_manager,
                                    all_vars=self._variable_manager.get_vars(play=play), start_at_done=True)
            for name in self._tqm._failed_hosts:
                iterator.mark_host_failed(self._inventory.get_host(name))
