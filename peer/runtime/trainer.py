"""Local training on this peer's shard, in a worker thread so the event loop never blocks.

The model is shared between the training thread and the gossip loop; one lock
guards it. Gossip reads a snapshot (``state``) and applies merges (``merge_with``)
under that lock, so a merge never interleaves with an optimiser step. Evaluation
copies the weights under the lock and runs outside it (``peer.runtime.evaluation``): the
lock is only ever held for one step, one merge or one copy, because the event loop
takes it too (status digests, gossip snapshots).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from peer.data import Dataset
from peer.runtime.config import MERGE_MOMENTUM
from peer.runtime.drift_correction import DriftCorrection
from peer.runtime.evaluation import EvalPolicy, accuracy, eval_layout
from peer.runtime.lr_schedule import LrSchedule
from peer.runtime.sgd import MomentumSGD

log = logging.getLogger(__name__)

State = dict[str, np.ndarray]


def _to_cpu(obj: Any) -> Any:
    """A copy of a nested state dict with every tensor on the CPU (checkpoints are device-free)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _cpu_copy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy copy of ``tensor``. On the CPU the copy is numpy's: its allocator advises
    huge pages for large arrays, where torch's faults every 4 KiB page of the fresh copy
    (measured on this VM: 100 MB copied in 13 ms of CPU instead of 42 ms; bench/RESULTS.md
    "Transport at gRPC's speed"). Elsewhere the device-to-host copy is the copy."""
    t = tensor.detach()
    if t.device.type == "cpu":
        return np.array(t.numpy(), copy=True, order="C")
    return t.to("cpu").numpy()


# How much nicer than the peer's other threads the training thread runs (Linux thread niceness;
# 0 leaves it as it is). An exchange holds a partner waiting and moves a whole model through
# gRPC's threads and the event loop; on a machine with few cores a training step competing
# for the same CPU at equal weight halved the keyframe's throughput (bench.transport, trainer
# running: 0.23-0.26 of bare gRPC against 0.39-0.58 idle, and the same with the training in a
# third process: CPU, not the GIL). At +10 the kernel gives the exchange's threads ~90 % of a
# contended core and the trainer every cycle nobody else wants (bench/RESULTS.md, "Issue 12,
# session 7"). Threads it creates inherit it (torch's intra-op pool, when training is first to use it).
TRAINER_NICENESS = int(os.environ.get("HEARSAY_TRAINER_NICE", "10"))


def yield_cpu_to_exchanges(niceness: int = TRAINER_NICENESS) -> None:
    """Make the calling thread ``niceness`` steps nicer (at most 19), where the OS allows."""
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))
    except OSError:  # not permitted here (a sandbox): train at the process's priority
        log.debug("could not lower the training thread's priority", exc_info=True)


def resolve_device(choice: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is present; ``cuda`` without one is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is available")
    if choice in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _cpu_views(tensors: Mapping[str, torch.Tensor]) -> State | None:
    """Writable numpy views of ``tensors`` when all are on the CPU and none shares memory
    with another; None otherwise (the caller works on copies)."""
    storages = set()
    for t in tensors.values():
        if t.device.type != "cpu":
            return None
        storages.add(t.untyped_storage().data_ptr())
    if len(storages) != len(tensors):
        return None
    return {k: v.detach().numpy() for k, v in tensors.items()}


class _LiveTensors(Mapping[str, np.ndarray]):
    """A model's tensors read as numpy arrays: views on the CPU, a CPU copy per read elsewhere."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._tensors = tensors
        # Names, shapes and dtypes (protocol.feedback.spec_of), read without copying a tensor.
        self.spec = tuple((name, tuple(int(d) for d in t.shape), str(t.dtype).removeprefix("torch."))
                          for name, t in tensors.items())

    def __getitem__(self, name: str) -> np.ndarray:
        t = self._tensors[name].detach()
        return t.numpy() if t.device.type == "cpu" else t.to("cpu", copy=True).numpy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


@dataclass(frozen=True)
class TrainerStats:
    steps: int
    loss: float          # mean training loss since the previous evaluation (NaN before the first)
    accuracy: float      # test accuracy at the last evaluation (-1 before the first)
    version: int         # bumps on every step and every merge
    done: bool           # max_steps reached


class Trainer:
    def __init__(self, model: nn.Module, data: Dataset, shard: np.ndarray, *, device: torch.device,
                 seed: int, batch_size: int, lr: float, momentum: float, max_steps: int = 0,
                 steps_per_second: float = 0.0, eval_every: int = 25, eval_policy: EvalPolicy | None = None,
                 merge_momentum: str = "keep", drift_correction: float = 0.0, lr_schedule: LrSchedule | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self.model = model.to(device)
        self.samples = int(len(shard))
        # Fancy indexing copies, so memory-mapped data sets leave only this shard in memory.
        self.train_x = torch.from_numpy(np.asarray(data.train_x[shard])).to(device)
        self.train_y = torch.from_numpy(np.asarray(data.train_y[shard])).to(device)
        self.eval_policy = eval_policy or EvalPolicy(every=eval_every)
        subset = self.eval_policy.subset(len(data.test_y))
        self.test_total = int(len(data.test_y))
        self.test_x = torch.from_numpy(np.asarray(data.test_x[subset])).to(device)
        self.test_y = torch.from_numpy(np.asarray(data.test_y[subset])).to(device)
        self._eval_model: nn.Module | None = None  # a copy the weights are evaluated in, off the lock
        # The budget counts CPU time of the thread doing the work (time.thread_time), not wall
        # time: on a loaded machine one slow evaluation (say, while N peers import torch at
        # start-up) must not silence evaluation for minutes, and a step's share stays a share.
        self._eval_cost = 0.0            # CPU seconds of the last evaluation
        self._train_cpu_since_eval = 0.0
        self._last_eval_step = 0
        self.eval_cpu_seconds = 0.0      # totals, so the share can be checked
        self.train_cpu_seconds = 0.0
        self.batch_size = min(batch_size, self.samples)
        # torch.optim.SGD's arithmetic and state format without its import of torch._dynamo
        # on first use (1.2 CPU-s of every peer's start; peer.runtime.sgd).
        self.optimizer = MomentumSGD(self.model.parameters(), lr=lr, momentum=momentum)
        # The learning rate is base_lr times the schedule's factor, set before every step;
        # ``clock`` is the schedule's (the simulator passes its virtual one).
        self.base_lr = lr
        self.lr_schedule = lr_schedule
        self._clock = clock
        self._training_began: float | None = None  # the schedule's start: this peer's first step
        self.loss_fn = nn.CrossEntropyLoss()
        self.max_steps = max_steps
        # What a merge does to SGD momentum (MERGE_MOMENTUM): the buffer holds the last
        # steps' direction on this shard, which the merged weights no longer came from.
        if merge_momentum not in MERGE_MOMENTUM:
            raise ValueError(f"merge_momentum must be one of {', '.join(MERGE_MOMENTUM)}, got {merge_momentum!r}")
        self.merge_momentum = merge_momentum
        # A control variate for this shard's pull, learned from merges (peer.runtime.drift_correction).
        self._drift = DriftCorrection(self.optimizer, drift_correction) if drift_correction > 0 else None
        self.min_step_seconds = 1.0 / steps_per_second if steps_per_second > 0 else 0.0
        self._gen = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0
        self._lock = threading.Lock()
        # Held only while the weights change (the optimiser's step, a merge, a restore): a copy
        # of the model (``state``) waits for that, not for a whole step's forward and backward
        # passes, which only read the weights (measured in bench.transport with the trainer
        # running: the answering peer's copy waited 0.30 s for the step instead of 0.07 s).
        self._weights = threading.Lock()
        self._eval_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._steps = 0
        self._version = 0
        self._loss_sum = 0.0
        self._loss_count = 0
        self._loss = float("nan")
        self._accuracy = -1.0
        self.on_evaluated: Callable[[TrainerStats], None] | None = None
        # Called with each step's duration in seconds (metrics histogram).
        self.on_step: Callable[[float], None] | None = None

    # --- the model, shared with gossip -------------------------------------------------------
    def state(self) -> State:
        """A CPU copy of every tensor of the model (parameters and buffers), between two
        changes of the weights (a step's forward and backward passes may be running; running
        statistics that a forward pass updates, as batch norm's, may then be a step ahead)."""
        with self._weights:
            return {k: _cpu_copy(v) for k, v in self.model.state_dict().items()}

    def live(self) -> tuple[Mapping[str, np.ndarray], Callable[[], AbstractContextManager[object]] | None]:
        """The model's tensors as they are, for reading without a copy of the whole model,
        and the context in which they hold still (the weights lock; not reentrant: do not
        call other methods of the trainer inside it). On the CPU the arrays are views of
        the model's own tensors, which training changes in place; elsewhere each is copied
        to the CPU when read. ``protocol.feedback.Sender.prepare(live=...)`` reads them a
        tensor at a time. The second item is None when the first is a snapshot of its own
        (subclasses that send something else than the model)."""
        # The weights lock, not the step's: reading the weights needs them not to change (the
        # optimiser's step, a merge, a restore), not a whole forward and backward pass to end
        # (measured, bench.transport full with the trainer running: the answering peer's keyframe
        # waited 0.49 s for the step instead of 0.02 s idle; bench/RESULTS.md, "Session 6").
        with self._weights:
            return _LiveTensors(self.model.state_dict()), lambda: self._weights

    def merge_in_place(self, merge: Callable[[State], object]) -> None:
        """``merge(current)`` writes the merged model into ``current``'s arrays, atomically
        with respect to training.

        On the CPU ``current`` holds the model's own tensors (views): the merge lands in the
        model with no model-sized copy on the way, where ``merge_with`` holds the merge's
        output and then loads it. A model on another device, or whose tensors share memory
        (tied weights: merged in place, a shared tensor would be merged twice), gets a CPU
        copy that is loaded back afterwards, as ``merge_with`` does.
        """
        # The weights lock too: a copy (``state``) must not see a half-merged model.
        with self._lock, self._weights:
            before = self._before_merge()
            tensors = self.model.state_dict()
            views = _cpu_views(tensors)
            if views is not None:
                merge(views)
            else:
                current = {k: v.detach().to("cpu", copy=True).numpy() for k, v in tensors.items()}
                merge(current)
                self.model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in current.items()})
            self._after_merge(before)
            self._version += 1

    def merge_with(self, merge: Callable[[State], State], *, adopt: bool = False) -> None:
        """Replace the model by ``merge(current state)``, atomically with respect to training.

        ``adopt``: the new model is another one taken whole (a bootstrap, a sampled round's
        aggregate), not a merge undoing this shard's drift, so the drift correction does not
        learn from the jump."""
        with self._lock:
            current = {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}
            merged = merge(current)
            before = None if adopt else self._before_merge()
            with self._weights:
                self.model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in merged.items()})
                self._after_merge(before)
                self._version += 1

    def _before_merge(self) -> dict[str, torch.Tensor] | None:
        """The parameters before a merge, for the drift correction (a merge overwrites them in
        place: ``merge_in_place``'s views are the parameters themselves); None without it."""
        if self._drift is None:
            return None
        return {k: p.detach().clone() for k, p in self.model.named_parameters()}

    def _after_merge(self, before: dict[str, torch.Tensor] | None) -> None:
        """Let the drift correction learn from the merge, and apply ``merge_momentum`` to the
        optimiser's momentum buffers (call under the lock)."""
        if self._drift is not None and before is not None:
            self._drift.learn(self.model.named_parameters(), before, self.base_lr)
        if self.merge_momentum == "keep":
            return
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    buf.zero_()

    def digest(self) -> str:
        """SHA-256 over all tensors: equal digests mean bit-identical models."""
        h = hashlib.sha256()
        for name, x in self.state().items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(x).tobytes())
        return h.hexdigest()

    # --- checkpoints -------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly where training is: model, optimiser, batch order."""
        with self._lock:
            return {
                "model": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
                "optimizer": _to_cpu(self.optimizer.state_dict()),
                "generator": self._gen.get_state(),
                "order": self._order.detach().cpu().clone(),
                "cursor": self._cursor,
                "steps": self._steps,
                "version": self._version,
                "accuracy": self._accuracy,
            }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``checkpoint_state()`` output (raises on a model of another shape)."""
        with self._lock, self._weights:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            # The rate comes from this run's options (and schedule), not the saved optimiser:
            # like every knob `hearsay set` changes, a set lr lasts until the restart.
            self._set_lr(self.base_lr)
            self._gen.set_state(state["generator"])
            self._order = state["order"].to(self.device)
            self._cursor = int(state["cursor"])
            self._steps = int(state["steps"])
            self._version = int(state["version"])
            self._accuracy = float(state["accuracy"])

    # --- training ----------------------------------------------------------------------------
    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Epoch-wise reshuffling from a seeded generator: reproducible batch order.
        if self._cursor + self.batch_size > len(self._order):
            self._order = torch.randperm(self.samples, generator=self._gen).to(self.device)
            self._cursor = 0
        idx = self._order[self._cursor:self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return self.train_x[idx], self.train_y[idx]

    def step(self) -> float:
        """One SGD step on a mini-batch of the shard; returns its loss."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        self._follow_schedule()
        x, y = self._next_batch()
        with self._lock:
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(x), y)
            loss.backward()
            with self._weights:
                if self._drift is not None:
                    self._drift.correct()
                self.optimizer.step()
                self._steps += 1
                self._version += 1
        value = float(loss.detach())
        if self.on_step is not None:
            self.on_step(time.perf_counter() - started)
        self._loss_sum += value
        self._loss_count += 1
        cpu = time.thread_time() - cpu_started
        self.train_cpu_seconds += cpu
        self._train_cpu_since_eval += cpu
        if (self._steps - self._last_eval_step >= self.eval_policy.every
                and self._train_cpu_since_eval >= self.eval_policy.wait_after(self._eval_cost)):
            self.evaluate()
        return value

    @property
    def lr(self) -> float:
        """The learning rate the next step takes (the last one set)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def set_base_lr(self, lr: float) -> None:
        """Change the base rate at once; a schedule keeps scaling it (the same fraction now)."""
        self.base_lr = lr
        if self.lr_schedule is None or self._training_began is None:
            self._set_lr(lr)  # a schedule not yet begun starts at the base rate
        else:
            self._follow_schedule()

    def _follow_schedule(self) -> None:
        if self.lr_schedule is None:
            return
        now = self._clock()
        if self._training_began is None:
            self._training_began = now
            log.info("learning rate %g, %s down to %g over the %.1f s left to the schedule's end", self.base_lr,
                     self.lr_schedule.kind, self.base_lr * self.lr_schedule.floor, self.lr_schedule.end - now)
        self._set_lr(self.base_lr * self.lr_schedule.factor(self._training_began, now))

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_steps(self, n: int) -> None:
        for _ in range(n):
            self.step()

    def evaluate(self) -> float:
        """Test accuracy of the current model on the evaluation subset; also closes the loss window.

        The weights are copied under the lock (as long as a merge) and evaluated outside
        it, so gossip and the event loop never wait for an evaluation.
        """
        with self._eval_lock:  # gossip threads evaluate too once training is done
            return self._evaluate()

    def _evaluate(self) -> float:
        started = time.thread_time()
        with self._lock:
            if self._eval_model is None:
                self._eval_model = eval_layout(copy.deepcopy(self.model))
            else:
                self._eval_model.load_state_dict(self.model.state_dict())
            self._last_eval_step = self._steps
        self._accuracy = accuracy(self._eval_model, self.test_x, self.test_y, self.device)
        self._eval_cost = time.thread_time() - started
        self.eval_cpu_seconds += self._eval_cost
        self._train_cpu_since_eval = 0.0
        if self._loss_count:
            self._loss = self._loss_sum / self._loss_count
            self._loss_sum, self._loss_count = 0.0, 0
        if self.on_evaluated is not None:
            self.on_evaluated(self.stats())
        return self._accuracy

    def stats(self) -> TrainerStats:
        done = self.max_steps > 0 and self._steps >= self.max_steps
        return TrainerStats(self._steps, self._loss, self._accuracy, self._version, done)

    # --- the worker thread -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hearsay-trainer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        yield_cpu_to_exchanges()
        policy = self.eval_policy
        log.info("evaluating on %d of %d test samples (%s), at most every %d steps and %.0f%% of the training "
                 "time", len(self.test_y), self.test_total, "all" if len(self.test_y) == self.test_total else
                 f"seeded subset, seed {policy.seed}", policy.every, 100 * policy.budget)
        try:
            self.evaluate()  # the starting accuracy, in this thread: start() is called on the event loop
            while not self._stop.is_set() and not self.stats().done:
                started = time.monotonic()
                self.step()
                spare = self.min_step_seconds - (time.monotonic() - started)
                if spare > 0:
                    self._stop.wait(spare)  # paced, and wakes at once on stop
            if self.stats().done:
                self.evaluate()
                log.info("training done after %d steps, accuracy %.4f", self._steps, self._accuracy)
        except Exception:  # noqa: BLE001 - a dead trainer must be loud, not silent
            log.exception("training thread failed")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
