"""Diagnostic (issue 14, session 7): does a robust centre of recent models tell loss-shift models from honest ones?

Runs one bench.byzantine job (bristle+loss+rep, ATTACK, 4 attackers, ROUNDS rounds) and, for every model an
honest peer received, the cosine of its update with the way to the median / mean of the last 8 models taken from
distinct senders and with an EMA of past updates, and distances to the centre; percentiles by sender kind and verdict.

    python -m bench.byzantine_direction [ATTACK [ROUNDS]]
"""
import sys, json, math
import numpy as np, torch
from bench import byzantine as B
from protocol.merge import robust as R
from protocol.merge.base import is_mergeable

attack = sys.argv[1] if len(sys.argv) > 1 else "loss-shift"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 40
ATT = set()
LOG = []
orig = R.BristleRule.merge_report

def flat(t, keys):
    return np.concatenate([np.asarray(t[k], dtype=np.float64).ravel() for k in keys])

def patched(self, local, received):
    keys = [k for k, v in local.tensors.items() if is_mergeable(v)]
    x = flat(local.tensors, keys)
    store = self.__dict__.setdefault("_store", {})
    ema = self.__dict__.get("_ema")
    rep = orig(self, local, received)
    for c, v in zip(received, rep.verdicts):
        xk = flat(c.tensors, keys)
        u = xk - x
        row = {"att": c.sender.split("#")[0] in ATT, "kind": v.kind, "d": float(np.linalg.norm(u))}
        if len(store) >= 3:
            M = np.stack(list(store.values()))
            C = np.median(M, axis=0)
            d = C - x
            row["cos_med"] = float(u @ d / (np.linalg.norm(u) * np.linalg.norm(d) + 1e-12))
            dists = np.linalg.norm(M - C, axis=1)
            row["dC"] = float(np.linalg.norm(xk - C) / (np.median(dists) + 1e-12))
            row["dxC"] = float(np.linalg.norm(x - C) / (np.median(dists) + 1e-12))
            Cm = M.mean(axis=0); dm = Cm - x
            row["cos_mean"] = float(u @ dm / (np.linalg.norm(u) * np.linalg.norm(dm) + 1e-12))
        if ema is not None:
            row["cos_ema"] = float(u @ ema / (np.linalg.norm(u) * np.linalg.norm(ema) + 1e-12))
        LOG.append(row)
        if v.kind == "ok":
            store.pop(c.sender, None); store[c.sender] = xk
            while len(store) > 8: store.pop(next(iter(store)))
            ema = u if ema is None else 0.8 * ema + 0.2 * u
    self._ema = ema
    return rep

R.BristleRule.merge_report = patched
orig_run_sim = B.Simulator.__init__
def init(self, *a, **k):
    orig_run_sim(self, *a, **k)
    for i in self.attackers: ATT.add(self.peers[i].address)
B.Simulator.__init__ = init
torch.set_num_threads(1)
r = B.run(B.Job("bristle+loss+rep/nodir", attack, 4 if attack != "none" else 0, rounds, 10, 0))
print("acc", r["honest_accuracy_mean"])
for key in ("cos_med", "cos_mean", "cos_ema", "dC", "dxC", "d"):
    for att in (False, True):
        for kind in ("ok", "outlier"):
            vals = np.array([row[key] for row in LOG if key in row and row["att"] == att and row["kind"] == kind])
            if len(vals):
                q = np.percentile(vals, [5, 25, 50, 75, 95])
                print(f"{key:8s} {'ATT' if att else 'hon'} {kind:7s} n={len(vals):4d} " + " ".join(f"{v:+.3f}" for v in q) + f"  frac<0={np.mean(vals<0):.2f}")
