"""Stochastic gradient descent with momentum: torch.optim.SGD's arithmetic and state format,
without the import of ``torch._dynamo`` that torch's optimisers make on first use.

Every public method of ``torch.optim.Optimizer`` (``add_param_group``, which the constructor
calls, ``step``, ``zero_grad``, ``state_dict``, ``load_state_dict``) is wrapped in
``torch._disable_dynamo`` or ``_use_grad_for_differentiable``, and both import
``torch._dynamo`` when first called: 1.1-1.2 CPU-s on an idle core (as much as ``import
torch``), paid by every ``hearsay run`` before its first step although nothing here is ever
compiled (bench/RESULTS.md, "Issue 15, session 7").

``MomentumSGD`` does what ``torch.optim.SGD(params, lr=lr, momentum=momentum)`` does with its
defaults (no dampening, weight decay, Nesterov or maximisation), with the same tensor operations
in the same order, so trajectories are bit-identical (tests/peer/test_sgd.py compares them):

    buf = grad.clone()                      on the first step
    buf = buf * momentum + grad             on later ones (torch: ``mul_`` then ``add_``)
    param = param - lr * buf                (``add_(buf, alpha=-lr)``)

and, as torch does by default, the ``torch._foreach_*`` forms of these when every parameter is on
a CUDA or XPU device (torch's multi-tensor path), the per-tensor forms elsewhere.

``state``, ``param_groups``, ``state_dict()`` and ``load_state_dict()`` have torch's layout, so
a checkpoint written with ``torch.optim.SGD`` loads here and the other way round.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from copy import deepcopy
from typing import Any

import torch

# The hyper-parameters torch.optim.SGD keeps in a group, in its order, with its defaults.
_GROUP_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3, "momentum": 0.0, "dampening": 0, "weight_decay": 0, "nesterov": False,
    "maximize": False, "foreach": None, "differentiable": False, "fused": None,
}
# Features of torch's SGD this class does not implement: a group that asks for one is refused
# (a loaded state dict could), rather than silently stepped without it.
_UNSUPPORTED = {"dampening": 0, "weight_decay": 0, "nesterov": False, "maximize": False,
                "differentiable": False}
# What torch's SGD.__setstate__ fills in a loaded group that lacks it (older torch versions).
_SETSTATE_DEFAULTS: dict[str, Any] = {"nesterov": False, "maximize": False, "foreach": None,
                                      "differentiable": False, "fused": False}
# Devices where torch's SGD takes its multi-tensor (foreach) path by default.
_FOREACH_DEVICES = ("cuda", "xpu")


class MomentumSGD:
    """``torch.optim.SGD(params, lr=lr, momentum=momentum)`` without ``torch._dynamo``."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        group: dict[str, Any] = {"params": params, **_GROUP_DEFAULTS, "lr": lr, "momentum": momentum}
        self.param_groups: list[dict[str, Any]] = [group]
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)

    @staticmethod
    def _check(group: dict[str, Any]) -> None:
        for key, plain in _UNSUPPORTED.items():
            if group.get(key, plain) != plain:
                raise ValueError(f"MomentumSGD does not implement {key}={group[key]!r} (torch.optim.SGD's option)")
        if group.get("fused"):
            raise ValueError("MomentumSGD does not implement fused=True (torch.optim.SGD's option)")

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            self._check(group)
            momentum, lr = group["momentum"], group["lr"]
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise ValueError("MomentumSGD does not implement sparse gradients")
            # torch's SGD reads the buffers through its defaultdict, which files an empty
            # state for every parameter with a gradient, first step or not.
            bufs = [self.state[p].get("momentum_buffer") for p in params] if momentum != 0 else []
            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.device.type in _FOREACH_DEVICES for p in params)
            if foreach:
                self._multi_tensor(params, grads, bufs, momentum, lr)
            else:
                self._single_tensor(params, grads, bufs, momentum, lr)
            if momentum != 0:
                for p, buf in zip(params, bufs, strict=True):
                    self.state[p]["momentum_buffer"] = buf

    @staticmethod
    def _single_tensor(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor | None],
                       momentum: float, lr: float) -> None:
        # torch.optim.sgd._single_tensor_sgd with dampening 0, no weight decay, no Nesterov.
        for i, param in enumerate(params):
            grad = grads[i]
            if momentum != 0:
                buf = bufs[i]
                if buf is None:
                    buf = grad.detach().clone()
                    bufs[i] = buf
                else:
                    buf.mul_(momentum).add_(grad, alpha=1)
                grad = buf
            param.add_(grad, alpha=-lr)

    @staticmethod
    def _multi_tensor(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor | None],
                      momentum: float, lr: float) -> None:
        # torch.optim.sgd._multi_tensor_sgd, likewise: one foreach call per (device, dtype).
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault((p.device, p.dtype), []).append(i)
        for indices in groups.values():
            device_params = [params[i] for i in indices]
            device_grads = [grads[i] for i in indices]
            if momentum != 0:
                device_bufs = [bufs[i] for i in indices]
                if all(b is not None for b in device_bufs):
                    torch._foreach_mul_(device_bufs, momentum)
                    torch._foreach_add_(device_bufs, device_grads, alpha=1)
                else:
                    for j, i in enumerate(indices):
                        buf = device_bufs[j]
                        if buf is None:
                            buf = device_grads[j].detach().clone()
                        else:
                            buf.mul_(momentum).add_(device_grads[j], alpha=1)
                        device_bufs[j] = bufs[i] = buf
                device_grads = device_bufs
            torch._foreach_add_(device_params, device_grads, alpha=-lr)

    # --- torch's state-dict layout -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {"momentum_buffer": tensor}}, "param_groups": [...]}``, parameters
        numbered across the groups in order, as ``torch.optim.Optimizer.state_dict`` does."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {(index[id(p)] if isinstance(p, torch.Tensor) else p): v for p, v in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class or of ``torch.optim.SGD`` (the saved hyper-parameters
        replace the group's, and buffers take each parameter's dtype and device, as torch does)."""
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(self.param_groups, saved_groups, strict=True)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of optimizer's group")
        for saved in saved_groups:
            self._check(saved)
        id_map = {saved_id: p for g, s in zip(self.param_groups, saved_groups, strict=True)
                  for saved_id, p in zip(s["params"], g["params"], strict=True)}
        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for key, value in state_dict["state"].items():
            if key in id_map:
                param = id_map[key]
                state[param] = {k: _cast(param, v) for k, v in value.items()}
            else:
                state[key] = value
        groups = []
        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            saved["params"] = group["params"]
            for k, v in _SETSTATE_DEFAULTS.items():
                saved.setdefault(k, v)
            groups.append(saved)
        self.param_groups = groups
        self.state = state


def _cast(param: torch.Tensor, value: Any) -> Any:
    """torch's rule for loaded state: tensors move to the parameter's device, and floating
    ones take a floating parameter's dtype."""
    if not isinstance(value, torch.Tensor):
        return value
    if param.is_floating_point():
        return value.to(dtype=param.dtype, device=param.device)
    return value.to(device=param.device)
