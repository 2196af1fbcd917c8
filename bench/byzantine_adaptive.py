"""loss-shift that also knows the victim's direction test (protocol/merge/centre.py): one job of
bench.byzantine with the attacker's ascent step projected so that it never points away from the
victim's recent centre by more than the test allows.

    python -m bench.byzantine_adaptive [RULE]      # default: the daemon's defaults; prints the job's JSON

The bench's loss-shift attacker knows the victim's loss check and distance bound and picks its
step to pass them; this one knows the direction test too: where the plain ascent ``g`` makes a
cosine below ``direction_floor + 0.02`` with ``centre − x_victim``, the component along that
direction is raised until it does not, and the step is renormalised. Measured in bench/RESULTS.md
(issue 14, session 7). Not one of peer.sim's ``ATTACKS``: it patches ``peer.sim.attacks`` here.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from bench import byzantine
from peer.sim import attacks

_plain_ascent = attacks.AttackerMixin._ascent
_plain_poisoned = attacks.AttackerMixin._poisoned


def _poisoned(self, attacker, victim):  # type: ignore[no-untyped-def]
    self._victim_now = victim
    return _plain_poisoned(self, attacker, victim)


def _ascent(self, attacker, state):  # type: ignore[no-untyped-def]
    g = _plain_ascent(self, attacker, state)
    victim = getattr(self, "_victim_now", None)
    rule = self.rules[victim.index] if victim is not None else None
    store = getattr(rule, "centre", None)
    centre = store.centre() if store is not None else None
    if not g or centre is None:
        return g
    d = {n: np.asarray(centre[n], dtype=np.float64).reshape(np.shape(state[n])) - np.asarray(state[n], dtype=np.float64)
         for n in g}
    dd = sum(float(np.sum(v * v)) for v in d.values())
    if dd <= 0:
        return g
    dot = sum(float(np.sum(g[n] * d[n])) for n in g)
    want = (rule.direction_floor + 0.02) * np.sqrt(dd)  # g is a unit vector: cosine ≈ dot / |d|
    if dot < want:
        g = {n: g[n] + (want - dot) / dd * d[n] for n in g}
    norm = np.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
    return {n: v / norm for n, v in g.items()}


def main(argv: list[str]) -> int:
    attacks.AttackerMixin._ascent = _ascent
    attacks.AttackerMixin._poisoned = _poisoned
    torch.set_num_threads(1)
    rule = argv[0] if argv else "default"
    print(json.dumps(byzantine.run(byzantine.Job(rule, "loss-shift", 4, 40, 10, 0))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
