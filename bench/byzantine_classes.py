"""Why loss-shift is not held (issue 14, session 6): the honest peers' test accuracy per class,
split by how much of that class each peer's own training shard holds.

The loss check (``protocol.merge.LossCheck``) judges a received model on the receiving peer's own
shard. Loss-shift ascends the loss on the attacker's shard; this shows where the damage lands.
Same setting as ``bench.byzantine --quick`` with ``bristle+loss+rep`` (16 peers, Dirichlet 0.5,
40 rounds of 10 steps, attackers 12-15, seed 0); attack none, then loss-shift.

    python -m bench.byzantine_classes    # writes byzantine_classes.json; about 5 CPU-minutes
"""

from __future__ import annotations

import json

import numpy as np
import torch

from bench.byzantine import PEERS, RULES, _data
from peer.sim.swarm import SimConfig, Simulator

ATTACKERS = tuple(range(12, 16))
RARE, COMMON = 0.02, 0.10  # a class under 2 % of a peer's shard is one it barely sees; 10 % or more, one it holds


def per_class(attack: str) -> dict:
    spec = RULES["bristle+loss+rep"]
    cfg = SimConfig(peers=PEERS, split="dirichlet", alpha=0.5, merge=spec.merge, shared_init=True,
                    gossip_interval=10.0, seed=0, attack=attack, attackers=ATTACKERS if attack != "none" else (),
                    reputation=True, validate=True)
    sim = Simulator(cfg, _data(), None)
    sim.run_until(400.0)
    data = _data()
    x, y = torch.as_tensor(data.test_x), np.asarray(data.test_y)
    accuracy, share = [], []
    for i in sim.honest:
        t = sim.peers[i].trainer
        t.model.eval()
        with torch.no_grad():
            pred = t.model(x.to(next(t.model.parameters()).device)).argmax(1).cpu().numpy()
        accuracy.append([float((pred[y == c] == c).mean()) for c in range(data.num_classes)])
        own = t.train_y.cpu().numpy()
        share.append(np.bincount(own, minlength=data.num_classes) / len(own))
    acc, sh = np.array(accuracy), np.array(share)
    return {"mean": float(acc.mean()), "acc_classes_own_shard_lt_2pct": float(acc[sh < RARE].mean()),
            "acc_classes_own_shard_ge_10pct": float(acc[sh >= COMMON].mean()),
            "pairs_rare": int((sh < RARE).sum()), "pairs_common": int((sh >= COMMON).sum()),
            "per_class_mean": acc.mean(0).round(3).tolist()}


def main() -> int:
    torch.set_num_threads(1)
    out = {}
    for attack in ("none", "loss-shift"):
        out[attack] = per_class(attack)
        print(attack, json.dumps(out[attack]), flush=True)
    with open("byzantine_classes.json", "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
