r"""Training worker: one process per rank, torch DistributedDataParallel across ranks.

Run by :class:`~vortex.training.coordinator.BackgroundTrainingCoordinator` (one subprocess per
rank on this machine), or by hand / under ``torchrun`` on several machines with the same
arguments::

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        -m vortex.training.worker --snapshot /shared/snap.arrow --out /shared/run7 \
        --factory vortex.training.models:mlp --factory-kwargs '{"in_features": 64, "out_features": 10}'

Every rank reads the whole Arrow IPC snapshot (so the file must be reachable from every
machine), computes the same FluxDynamics weights and walks the same seeded sequence of
*global* batches of ``--batch-size`` rows; rank ``r`` trains on rows ``r, r + W, ...`` of each
global batch.  Each rank's loss is its share of the global weighted mean
(``W * sum_local(w * l) / sum_global(w)``), so DDP's gradient averaging yields exactly the
gradient of the weighted mean over the global batch: W ranks compute the same update as one
rank on the same data and seed.  Global batches with fewer rows than ranks are skipped.

Rank 0 then scores the candidate and the ``--init-version`` model of ``--registry`` on the
held-out (sacred-position) rows and writes ``candidate.safetensors``, then ``result.json``, into
``--out`` (each atomically). ``result.json`` is the run's commit marker: written last, by rank 0
only, and a stale one is deleted before training starts, so a reader that finds it finds the
candidate complete. ``--snapshot``, ``--out`` and ``--candidate`` may be fsspec URLs
(``s3://bucket/runs/run-7``) reached with the JSON storage options of
``$VORTEX_REGISTRY_STORAGE_OPTIONS`` (each file one object ``PUT`` on an object store: old or
new, never half); local paths never import fsspec. The worker's log is its standard error, on
its own machine.  With ``--candidate FILE`` the worker trains nothing: it only
scores that candidate against ``--init-version`` (the coordinator does this when the active
version changed during a run).  Training runs on CUDA when it is available (``--device``),
with the NCCL backend, else on the CPU with gloo; the loss totals live on the training device
and are all-reduced there.  The worker lowers its priority (``--nice``, optionally
``--sched-idle``) and limits torch to ``--threads`` threads so a serving process on the same
machine keeps its cores.  It dies with the process that started it (Linux parent-death
signal, or a watcher thread elsewhere), so a killed serving process leaves no worker behind.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import inspect
import json
import logging
import math
import os
import posixpath
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .._autogroup import lower_session_group
from ..errors import ConfigError, TrainingError, VortexError

__all__ = ["Adam", "WorkerArgs", "die_with_parent", "evaluate", "main", "per_sample_loss", "train"]

log = logging.getLogger("vortex.training.worker")

CANDIDATE_FILE = "candidate.safetensors"
RESULT_FILE = "result.json"
#: Environment variable holding the JSON fsspec options of a ``--registry`` URL (passed there,
#: not on the command line, which every user of the machine can read in ``/proc``).
STORAGE_OPTIONS_ENV = "VORTEX_REGISTRY_STORAGE_OPTIONS"


@dataclass
class WorkerArgs:
    """Parsed worker arguments (see ``python -m vortex.training.worker --help``)."""

    snapshot: str
    out: str
    factory: str
    factory_kwargs: dict[str, Any]
    task: str = "classification"
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    threads: int = 1
    nice: int = 10
    sched_idle: bool = False
    registry: str | None = None
    init_version: int | None = None
    flux: dict[str, Any] | None = None
    confidence_level: float = 0.95
    candidate: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        from .._fields import check_bool, check_number, fail_field

        for name in ("snapshot", "out", "factory", "registry", "candidate"):
            value = getattr(self, name)
            if not (isinstance(value, str) and value) and (value is not None or name in (
                    "snapshot", "out", "factory")):
                fail_field(self, name, value, "must be a non-empty string")
        for name in ("factory_kwargs", "flux"):
            value = getattr(self, name)
            if not isinstance(value, dict) and (value is not None or name == "factory_kwargs"):
                fail_field(self, name, value, "must be a JSON object (dict)")
        if self.task not in ("classification", "regression"):
            fail_field(self, "task", self.task, "must be 'classification' or 'regression'")
        if self.device not in ("auto", "cpu", "cuda"):
            fail_field(self, "device", self.device, "must be 'auto', 'cpu' or 'cuda'")
        check_number(self, "epochs", lo=1, integer=True)
        check_number(self, "lr", lo=0, lo_open=True)
        check_number(self, "batch_size", lo=1, integer=True)
        check_number(self, "seed", lo=0, integer=True)
        check_number(self, "threads", lo=1, integer=True)
        check_number(self, "nice", lo=0, hi=19, integer=True)
        check_number(self, "confidence_level", lo=0, hi=1, lo_open=True, hi_open=True)
        check_bool(self, "sched_idle")
        if self.init_version is not None:
            check_number(self, "init_version", lo=1, integer=True)
        if (self.init_version is None) != (self.registry is None):
            fail_field(self, "init_version", self.init_version, "--registry and --init-version go together")
        if self.candidate is not None and self.init_version is None:
            fail_field(self, "candidate", self.candidate, "--candidate needs --registry and "
                       "--init-version (the model to validate it against)")


def _json_object(text: str) -> dict[str, Any]:
    """Argparse type of the JSON-object options: a clear one-line error for anything else."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def _parse(argv: list[str] | None) -> WorkerArgs:
    p = argparse.ArgumentParser(prog="python -m vortex.training.worker", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--snapshot", required=True,
                   help="Arrow IPC snapshot file (SampleBuffer.snapshot().write_ipc), a path or an fsspec URL")
    p.add_argument("--out", required=True,
                   help="output directory (candidate.safetensors, result.json), a path or an fsspec URL")
    p.add_argument("--factory", required=True, help="model factory, 'package.module:function'")
    p.add_argument("--factory-kwargs", default="{}", type=_json_object, help="JSON object of factory kwargs")
    p.add_argument("--task", default="classification", choices=("classification", "regression"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32, help="global batch size (all ranks together)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per rank")
    p.add_argument("--nice", type=int, default=10, help="added to the process niceness (0: unchanged)")
    p.add_argument("--sched-idle", action="store_true",
                   help="run under SCHED_IDLE (Linux): only on otherwise idle CPU time")
    p.add_argument("--registry", default=None, help="model registry root (for --init-version)")
    p.add_argument("--init-version", type=int, default=None,
                   help="registry version to start from and to validate against (the active one)")
    p.add_argument("--flux", default=None, type=_json_object, help="JSON object of FluxConfig fields")
    p.add_argument("--confidence-level", type=float, default=0.95)
    p.add_argument("--candidate", default=None,
                   help="validate this safetensors candidate (a path or an fsspec URL) against "
                   "--init-version; no training")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="training device (auto: CUDA when available)")
    ns = p.parse_args(argv)
    try:
        args = WorkerArgs(**vars(ns))
    except ConfigError as exc:
        p.error(str(exc))
    if args.flux is not None:
        from ..config import FluxConfig

        known = {f.name for f in dataclasses.fields(FluxConfig)}
        unknown = sorted(set(args.flux) - known)
        if unknown:
            p.error(f"--flux: unknown field(s) {unknown}; known: {sorted(known)}")
        if isinstance(args.flux.get("holdout_positions"), list):
            args.flux["holdout_positions"] = tuple(args.flux["holdout_positions"])
        try:
            FluxConfig(**args.flux)
        except ValueError as exc:
            p.error(f"--flux: {exc}")
    for option in ("snapshot", "out", "candidate"):
        problem = _unsupported_url(getattr(args, option))
        if problem:
            p.error(f"--{option} {getattr(args, option)!r}: {problem}")
    from .models import resolve_factory

    try:
        factory = resolve_factory(args.factory)
    except (ImportError, AttributeError, ValueError) as exc:
        p.error(f"--factory {args.factory!r}: {type(exc).__name__}: {exc}")
    try:
        signature = inspect.signature(factory)
    except (ValueError, TypeError):  # a callable without an introspectable signature
        signature = None
    if signature is not None:
        try:
            signature.bind(**args.factory_kwargs)
        except TypeError as exc:
            p.error(f"--factory-kwargs {json.dumps(args.factory_kwargs)} do not fit {args.factory}: {exc}")
    return args


def _unsupported_url(value: str | None) -> str | None:
    """Why fsspec cannot open the URL ``value`` here (unknown protocol, driver not installed);
    None for a local path or a URL it can open. Nothing is contacted.
    """
    from .._fsspec import is_url

    if value is None or not is_url(value):
        return None
    protocol = value.split("://", 1)[0]
    try:
        from fsspec import get_filesystem_class

        get_filesystem_class(protocol)
    except ImportError as exc:
        return f"the protocol {protocol!r} needs a driver that is not installed ({exc})"
    except ValueError:
        return f"no fsspec filesystem handles the protocol {protocol!r}"
    return None


@contextmanager
def _reaching(option: str, url: str) -> Iterator[None]:
    """Name the option and the URL in a failure to reach ``url`` (a missing object, a storage
    that does not answer); Vortex's own errors (a damaged snapshot) already name it.
    """
    try:
        yield
    except VortexError:
        raise
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{option} {url!r}: no such file or object ({exc})") from exc
    except Exception as exc:  # s3fs / botocore raise many kinds, few of them OSError
        raise TrainingError(f"{option} {url!r} could not be reached: {type(exc).__name__}: {exc}") from exc


class _Output:
    """The ``--out`` location: a local directory (atomic files, fsynced) or an fsspec URL
    (each file written whole: one object ``PUT``).
    """

    def __init__(self, out: str, storage_options: dict[str, Any]) -> None:
        from .._fsspec import is_url

        self.out = out
        self.fs: Any = None
        if is_url(out):
            from .._fsspec import filesystem

            with _reaching("--out", out):
                self.fs, self.root = filesystem(out, storage_options)

    def _path(self, name: str) -> str:
        return posixpath.join(self.root, name) if self.fs is not None else os.path.join(self.out, name)

    def drop_stale_result(self) -> None:
        """Delete a ``result.json`` left by an earlier run into the same ``--out``: the commit
        marker must only ever describe this run's candidate. (Also checks, before training, that
        the location can be reached.)
        """
        path = self._path(RESULT_FILE)
        if self.fs is None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        with _reaching("--out", self.out):
            if self.fs.exists(path):
                self.fs.rm_file(path)

    def write(self, name: str, data: bytes) -> None:
        """Write the file ``name`` whole or not at all."""
        if self.fs is None:
            from .._io import atomic_write_bytes

            os.makedirs(self.out, exist_ok=True)
            atomic_write_bytes(self._path(name), data)
            return
        from .._fsspec import put_whole

        with _reaching("--out", self.out):
            put_whole(self.fs, self._path(name), data)


def _read_candidate(path: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """The state dict of the ``--candidate`` safetensors file (a path or a URL)."""
    from .._fsspec import is_url

    if not is_url(path):
        from safetensors.torch import load_file

        return load_file(path)
    from safetensors.torch import load

    from .._fsspec import read_url

    with _reaching("--candidate", path):
        data = read_url(path, storage_options)
    return load(data)


def per_sample_loss(output, target, task: str):
    """Per-sample loss: cross-entropy (classification) or squared error averaged over outputs."""
    import torch.nn.functional as F  # noqa: N812 - torch's own convention

    if task == "classification":
        return F.cross_entropy(output, target, reduction="none")
    if output.dim() == target.dim() + 1 and output.shape[-1] == 1:
        output = output.squeeze(-1)
    err = (output - target) ** 2
    return err.reshape(err.shape[0], -1).mean(dim=1) if err.dim() > 1 else err


class Adam:
    """Adam with torch.optim.Adam's default update (no weight decay, no amsgrad).

    The worker uses this instead of ``torch.optim.Adam`` because constructing any
    ``torch.optim`` optimizer imports ``torch._dynamo`` on first use, about 1.3 s of every
    run's start-up; the update is the same arithmetic as torch's single-tensor Adam (a test
    checks the parameters match).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        import torch

        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps = lr, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = [0] * len(self.params)  # per parameter, as torch's state["step"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (set it to None, torch's default).

        ``set_to_none`` is accepted for ``torch.optim.Optimizer``'s signature only: gradients
        are always set to None, never zero-filled.
        """
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """One Adam update of every parameter that has a gradient; one without is left as it
        is and its step count, hence its bias correction, does not advance (as torch counts
        each parameter's steps).
        """
        import torch

        b1, b2 = self.betas
        steps = self.steps
        with torch.no_grad():
            for i, (p, m, v) in enumerate(zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True)):
                if p.grad is None:
                    continue
                steps[i] += 1
                step_size = self.lr / (1 - b1 ** steps[i])
                bias_correction2_sqrt = math.sqrt(1 - b2 ** steps[i])
                g = p.grad
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / bias_correction2_sqrt).add_(self.eps)
                p.addcdiv_(m, denom, value=-step_size)


def train(model, x, y, w, *, task: str, epochs: int, lr: float, batch_size: int, seed: int,
          rank: int = 0, world_size: int = 1, step_model=None) -> list[float]:
    """Train ``model`` with Adam on the weighted mean loss; return the weighted mean loss per epoch.

    ``x``, ``y``, ``w`` are the *whole* training set on every rank; ``x`` and ``y`` on the
    model's device, ``w`` there or on the host (it is read on the host and copied to the
    device); rank ``rank`` of ``world_size`` trains on its rows of each seeded global batch.
    ``step_model`` is the module used for the forward pass (the DDP wrapper of ``model``);
    default ``model``. The loss totals stay on that device (one host sync per epoch) and are
    all-reduced there, as NCCL requires.
    """
    import torch

    net = step_model if step_model is not None else model
    dist: Any = None  # torch.distributed, imported only with several ranks
    if world_size > 1:
        import torch.distributed as dist
    opt = Adam(model.parameters(), lr=lr)
    n = x.shape[0]
    device = x.device
    # which global batches count is decided on the host: the same on every rank, no sync per batch
    w_host = w.detach().cpu()
    w = w.to(device)
    net.train()
    losses = []
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen)
        # one gather per epoch: every batch is then a contiguous slice (a view, no copy)
        on_device = order.to(device)
        xs, ys, ws = x[on_device], y[on_device], w[on_device]
        ws_host = w_host[order]
        starts = range(0, n, batch_size)
        batch_w = torch.stack([ws_host[i:i + batch_size].sum() for i in starts]).tolist() if n else []
        # [sum(w * l), sum(w)] over this rank's rows
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for start, w_global in zip(starts, batch_w, strict=True):
            stop = min(start + batch_size, n)
            if stop - start < world_size or not w_global > 0:
                continue
            rows = slice(start + rank, stop, world_size)
            wb = ws[rows]
            wl = torch.dot(wb, per_sample_loss(net(xs[rows]), ys[rows], task))
            loss = wl * (world_size / w_global)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total[0] += wl.detach()
            total[1] += wb.sum() if world_size > 1 else w_global
        if dist is not None:
            dist.all_reduce(total)
        wl_sum, w_sum = total.tolist()
        epoch_loss = wl_sum / w_sum if w_sum > 0 else math.nan
        if not math.isfinite(epoch_loss):
            raise FloatingPointError(f"training diverged: epoch {epoch} loss is {epoch_loss}")
        losses.append(epoch_loss)
        log.info("rank %d epoch %d/%d weighted loss %.5f", rank, epoch + 1, epochs, epoch_loss)
    model.eval()
    return losses


def evaluate(model, x, y, task: str, chunk: int = 4096) -> tuple[Any, float]:
    """Per-sample scores and mean loss of ``model`` on ``(x, y)``.

    Scores are correctness in {0, 1} (classification) or the squared error (regression).
    """
    import numpy as np
    import torch

    model.eval()
    scores, losses = [], []
    with torch.inference_mode():
        for start in range(0, x.shape[0], chunk):
            out = model(x[start:start + chunk])
            target = y[start:start + chunk]
            loss = per_sample_loss(out, target, task)
            losses.append(loss)
            scores.append((out.argmax(dim=1) == target).to(torch.float64) if task == "classification"
                          else loss.to(torch.float64))
    if not scores:
        return np.zeros(0), math.nan
    return torch.cat(scores).numpy(), float(torch.cat(losses).mean())


def _load_data(args: WorkerArgs, storage_options: dict[str, Any]):
    """Read the snapshot; FluxDynamics weights and the train/held-out split via TrainingPipeline.

    The worker batches the pipeline's tensors itself (see :func:`train`) instead of using its
    DataLoader, because exact DDP equivalence needs seeded *global* batches sharded by rank
    and normalised by the global batch weight.
    """
    from .._fsspec import is_url
    from ..config import FluxConfig
    from . import Snapshot, TrainingPipeline

    if is_url(args.snapshot):
        with _reaching("--snapshot", args.snapshot):
            snapshot = Snapshot.read_ipc(args.snapshot, storage_options=storage_options)
    else:
        snapshot = Snapshot.read_ipc(args.snapshot)
    data = TrainingPipeline(FluxConfig(**(args.flux or {})), batch_size=args.batch_size,
                            task=args.task).build(snapshot)
    t, h = data.train, data.holdout
    return (t.features, t.labels, t.weights), (h.features, h.labels)


def _device(choice: str):
    """The training device: ``cuda:LOCAL_RANK`` when asked or available, else the CPU."""
    import torch

    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch reports no CUDA device")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def run(args: WorkerArgs) -> dict[str, Any]:
    """Train (or, with ``--candidate``, only validate), write the outputs; return the result
    dict (rank 0) or {}.
    """
    t0 = time.perf_counter()
    import torch

    from .models import build_model
    from .registry import ModelRegistry, state_dict_bytes
    from .validation import compare_models

    torch.set_num_threads(args.threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.candidate is not None and world_size != 1:
        raise ValueError(f"--candidate validates in one process, not WORLD_SIZE={world_size}")
    device = _device(args.device)
    dist: Any = None  # torch.distributed, imported only with several ranks
    if world_size > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    timings: dict[str, float] = {"import": time.perf_counter() - t0}
    try:
        t = time.perf_counter()
        options = json.loads(os.environ.get(STORAGE_OPTIONS_ENV) or "{}")
        output = _Output(args.out, options) if rank == 0 else None
        if output is not None:
            output.drop_stale_result()
        (x, y, w), (hx, hy) = _load_data(args, options)
        # the active version: starting point and validation baseline (checksum-verified)
        init_state = None
        if args.registry:
            init_state = ModelRegistry(args.registry, storage_options=options).load(args.init_version)
        torch.manual_seed(args.seed)
        model = build_model(args.factory, args.factory_kwargs)
        losses: list[float] = []
        if args.candidate is not None:
            model.load_state_dict(_read_candidate(args.candidate, options))
            timings["load"] = time.perf_counter() - t
        else:
            if init_state is not None:
                model.load_state_dict(init_state)
            model.to(device)
            x, y = x.to(device), y.to(device)  # train() moves w itself, it also reads it on the host
            step_model = None
            if dist is not None:
                from torch.nn.parallel import DistributedDataParallel

                step_model = DistributedDataParallel(
                    model, device_ids=[device] if device.type == "cuda" else None)
            timings["load"] = time.perf_counter() - t
            t = time.perf_counter()
            losses = train(model, x, y, w, task=args.task, epochs=args.epochs, lr=args.lr,
                           batch_size=args.batch_size, seed=args.seed, rank=rank,
                           world_size=world_size, step_model=step_model)
            timings["train"] = time.perf_counter() - t
        result: dict[str, Any] = {}
        if output is not None:
            t = time.perf_counter()
            model.to("cpu")
            result = {"rank_count": world_size, "train_samples": int(x.shape[0]),
                      "holdout_samples": int(hx.shape[0]), "epochs": len(losses),
                      "epoch_losses": losses, "train_loss": losses[-1] if losses else None,
                      "validation": None}
            if hx.shape[0] > 0:
                c_scores, c_loss = evaluate(model, hx, hy, args.task)
                if init_state is not None:
                    active = build_model(args.factory, args.factory_kwargs)
                    active.load_state_dict(init_state)
                    a_scores, a_loss = evaluate(active, hx, hy, args.task)
                else:
                    a_scores, a_loss = c_scores, c_loss
                result["validation"] = compare_models(
                    c_scores, a_scores, task=args.task, candidate_loss=c_loss, active_loss=a_loss,
                    confidence_level=args.confidence_level, seed=args.seed).to_dict()
            timings["validate"] = time.perf_counter() - t
            if args.candidate is None:
                t = time.perf_counter()
                output.write(CANDIDATE_FILE, state_dict_bytes(model))
                timings["save"] = time.perf_counter() - t
            result["timings"] = timings
            # last: the commit marker (see the module docstring)
            output.write(RESULT_FILE, json.dumps(result, allow_nan=True).encode())
        if dist is not None:
            dist.barrier()
        return result
    finally:
        if dist is not None:
            dist.destroy_process_group()


def die_with_parent() -> None:
    """Make this process exit as soon as the process that started it dies.

    The parent is ``$VORTEX_PARENT_PID`` (set by the coordinator) or, under ``torchrun``, the
    launcher that started this rank. On Linux the kernel delivers SIGKILL when it dies
    (``PR_SET_PDEATHSIG``); elsewhere a daemon thread checks every second. If the parent is
    already gone (it died before the signal was armed), the process exits at once.
    """
    expected = int(os.environ.get("VORTEX_PARENT_PID") or os.getppid())
    armed = False
    if sys.platform.startswith("linux"):
        try:
            pr_set_pdeathsig = 1
            armed = ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL),
                                                            0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != expected:
        log.error("the process that started this worker (pid %d) is gone: exiting", expected)
        os._exit(1)
    if not armed:
        def watch() -> None:
            while os.getppid() == expected:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="vortex-parent-watch", daemon=True).start()


AUTOGROUP_NICE = 19
"""The nice value of the autogroup of a training process that leads a session of its own."""


def lower_priority(nice: int, sched_idle: bool) -> None:
    """Make this process yield the CPU to serving: ``nice`` added to its niceness, and the
    SCHED_IDLE policy if ``sched_idle`` (threads started later, torch's and gloo's, inherit both).

    Both rank it only against the processes of its own *autogroup* (:mod:`vortex._autogroup`).
    A SCHED_IDLE worker in a session of its own took the CPU from a serving process as a
    normal one would (``benchmarks/bench_http.py``: a serving worker woken while it ran waited
    for its 4 ms tick). So the launcher keeps its workers in its session (a process group of
    their own, not a session), and a process that leads a session anyway (torchrun starts each
    rank so) lowers its group's nice to :data:`AUTOGROUP_NICE`: it is alone in that group.
    Failures are logged: training still works, only with more weight.
    """
    if nice:
        try:
            os.nice(nice)
        except OSError as exc:  # e.g. a container forbidding it
            log.warning("could not lower the worker's priority: %s", exc)
    if sched_idle:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError) as exc:
            log.warning("could not switch the worker to SCHED_IDLE: %s", exc)
    if nice or sched_idle:
        try:
            lower_session_group(AUTOGROUP_NICE)
        except OSError as exc:
            log.warning("could not lower the priority of the worker's autogroup: %s", exc)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m vortex.training.worker``; returns the exit status."""
    logging.basicConfig(level=os.environ.get("VORTEX_WORKER_LOG", "WARNING"),
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    die_with_parent()  # first: a worker must not outlive its coordinator, even while importing
    args = _parse(argv)
    lower_priority(args.nice, args.sched_idle)
    status = 0
    try:
        run(args)
    except Exception:
        log.exception("training worker failed")
        status = 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # gloo's worker threads drop the last tensors of a finished collective on their own
        # schedule, even after destroy_process_group(). If that happens while the interpreter
        # finalizes, the thread cannot take the GIL, is unwound through a noexcept destructor and
        # the process aborts (SIGABRT; a core dump showed it in ~1 two-rank run in 15 under
        # load). Everything this worker writes is already fsynced: leave without finalizing.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess tests
    sys.exit(main())
