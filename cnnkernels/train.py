"""The training loop behind ``cnnkernels train``: one process, or every rank of a ``torchrun`` job.

DistributedDataParallel over NCCL (GPUs) or Gloo (CPUs) with a ``DistributedSampler``; ``--batch``
is the global batch. Autocast with fp32 master weights (fp16 with a ``GradScaler``). Fashion-MNIST
idx files or synthetic images. Atomic checkpoints (rank 0) and bit-for-bit resume; SIGTERM saves
and exits 143. The README's "Training" section says what each option does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import itertools
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from cnnkernels import cli as _cli
from cnnkernels.cli import CPU_SIZE, TrainConfig, UsageError, _secs

__all__ = ["TrainConfig", "train", "save_checkpoint", "load_checkpoint", "build_model", "SyntheticImages"]

CHECKPOINT_FORMAT = 1
SIGTERM_EXIT = 128 + signal.SIGTERM  # the shell's status for a process ended by SIGTERM
AMP = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


# processes


@dataclasses.dataclass
class Dist:
    """This process's place in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launch_env() -> Dist:
    """Rank, world size and local rank from torchrun's environment (one process without it)."""
    values = []
    for key, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        try:
            values.append(int(text := os.environ.get(key, default)))
        except ValueError:
            raise UsageError(f"environment variable {key} must be an integer, got {text!r}") from None
    return Dist(*values)


def _device(where: Dist) -> torch.device:
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(where.local_rank)
    return torch.device("cuda", where.local_rank)


# data


class SyntheticImages(Dataset):
    """``n`` images of one channel: a class prototype plus noise, and their labels, each a pure
    function of ``(seed, index)``, so any rank or worker builds the same item."""

    def __init__(self, n: int, size: int, seed: int, offset: int = 0):
        self.n, self.size, self.seed, self.offset = n, size, seed, offset
        gen = torch.Generator().manual_seed(seed)
        self.protos = torch.randn(10, 1, size, size, generator=gen)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.offset + int(i)) % (2**63))
        y = int(torch.randint(0, 10, (), generator=gen))
        x = self.protos[y] + 0.5 * torch.randn(1, self.size, self.size, generator=gen)
        return x, y


class IdxImages(Dataset):
    """Fashion-MNIST arrays (uint8 images N x 28 x 28, labels N) as float images in [0, 1],
    resized to ``size`` x ``size`` as the course does (bilinear)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int):
        self.images, self.labels, self.size = images, labels, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.images[i].copy()).float().div_(255)[None, None]
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x[0], int(self.labels[i])


def read_idx(path: str, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes with ``ndim`` dimensions, gzipped or not (told by its first
    bytes), as a numpy array; anything else is a ``UsageError`` naming the file and the problem."""
    import gzip
    import zlib

    where = f"--data: {path}"
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        elif path.endswith(".gz"):
            raise UsageError(f"{where}: named .gz but not gzip-compressed")
    except (OSError, EOFError, zlib.error) as exc:
        raise UsageError(f"{where}: cannot read it ({exc})") from None
    if len(data) < 4 or data[0:2] != b"\0\0" or data[2] != 0x08:
        raise UsageError(f"{where}: not an idx file of unsigned bytes")
    if data[3] != ndim:
        raise UsageError(f"{where}: holds a {data[3]}-dimensional array, expected {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UsageError(f"{where}: truncated header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)
    if len(data) != expected or 0 in dims:
        raise UsageError(
            f"{where}: {len(data)} bytes, expected {expected} for shape {tuple(dims)} (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def fashion_mnist(directory: str, prefix: str = "train", required: bool = True):
    """Images and labels of one Fashion-MNIST split (``train`` or ``t10k``) in ``directory``;
    ``None`` for a missing split that is not ``required``."""
    import glob

    if not os.path.isdir(directory):
        raise UsageError(f"--data: {directory} is not a directory")

    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    paths = [min(glob.glob(os.path.join(glob.escape(directory), stem + "*")), default=None) for stem in stems]
    if not required and paths == [None, None]:
        return None
    for stem, path in zip(stems, paths):
        if path is None:
            raise UsageError(f"--data: no {stem}* idx file in {directory}")
    images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
    if len(images) != len(labels):
        raise UsageError(f"--data: {len(images)} images but {len(labels)} labels in {directory} ({prefix})")
    if labels.max() > 9:
        raise UsageError(f"--data: labels must be 0..9 (Fashion-MNIST's ten classes), found {int(labels.max())}")
    return images, labels


def load_data(cfg: TrainConfig, size: int) -> tuple[Dataset, Dataset | None, str]:
    """(training set, validation set or None, a description). Bad files are ``UsageError``s."""
    if cfg.data is None:
        train = SyntheticImages(cfg.synthetic, size, cfg.seed)
        val = SyntheticImages(10000, size, cfg.seed, offset=1 << 40)  # disjoint from training items
        return train, val, f"synthetic data ({cfg.synthetic} images, seed {cfg.seed})"
    train = IdxImages(*fashion_mnist(cfg.data), size)
    test = fashion_mnist(cfg.data, prefix="t10k", required=False)
    return train, None if test is None else IdxImages(*test, size), f"Fashion-MNIST from {cfg.data}"


# model


def _load_factory(spec: str):
    """``package.module:function`` or ``path/to/file.py:function``."""
    where, _, attr = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            if not os.path.isfile(where):
                raise UsageError(f"model: no file {where}")
            name = "_cnnkernels_model_" + os.path.splitext(os.path.basename(where))[0]
            module_spec = importlib.util.spec_from_file_location(name, where)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as exc:
        raise UsageError(f"model: cannot import {where} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"model: {where} has no callable {attr!r}")
    return factory


def build_model(cfg: TrainConfig, size: int) -> tuple[nn.Module, str]:
    """The model ``cfg.model`` names (one of the four, or ``MODULE:FUNCTION`` called with
    ``num_classes=10``, fused with ``cfg.fuse``) and its display name; checks the image size."""
    if ":" in cfg.model:
        name = cfg.model
        model = _load_factory(cfg.model)(num_classes=10)
        if not isinstance(model, nn.Module):
            raise UsageError(f"model: {cfg.model} returned a {type(model).__name__}, not a torch.nn.Module")
        if cfg.fuse:
            from cnnkernels import fuse

            model = fuse(model)
    else:
        try:
            (name,) = _cli._model_names(cfg.model, allow_all=False)
        except UsageError as exc:
            raise UsageError(f"{exc}, or MODULE:FUNCTION") from None
        if cfg.fuse:
            raise UsageError("--fuse: the named models are fused already; --fuse is for a MODULE:FUNCTION model")
        model = _cli._build(name)
    low = getattr(model, "min_input_size", 1)
    if isinstance(low, int) and size < low:
        _cli._check_size(name, model, size, size)
    return model, name


def _materialise(model: nn.Module, size: int, device: torch.device) -> None:
    """Lazy layers materialised and conv weights channels_last (the fused models' layout after their
    first call) before DDP sees the parameters, so its gradient buckets match the final strides."""
    if hasattr(model, "materialize"):
        model.materialize((1, 1, size, size))
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        with torch.no_grad():
            model(torch.zeros(1, 1, size, size, device=device))
    model.to(memory_format=torch.channels_last)


# checkpoints


def save_checkpoint(path: str, state: dict) -> None:
    """``torch.save(state)`` to ``path`` atomically: a fsynced temporary file in the same folder,
    ``os.replace``d over ``path``; a failure or a kill at any point leaves the previous file whole."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by ``save_checkpoint``; anything else is a ``UsageError`` naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated, not a torch file, unpicklable...
        raise UsageError(f"--checkpoint: {path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise UsageError(f"--checkpoint: {path} is not a cnnkernels training checkpoint")
    return state


def _rng_state(device: torch.device) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# Settings a resumed run shares with the run that saved the checkpoint (else it is a different run).
_RESUME_MUST_MATCH = ("model", "batch", "seed", "size", "dtype", "data", "synthetic", "accum", "fuse")


# progress


class Progress:
    """Step lines on rank 0: on a terminal with rich installed, rich's progress bar under them;
    otherwise plain lines (a pipe or a log gets each line as the step ends, never wrapped)."""

    def __init__(self, total: int, enabled: bool):
        self.enabled, self.bar = enabled, None
        if enabled and sys.stdout.isatty() and importlib.util.find_spec("rich"):
            from rich import progress as p

            columns = (p.TextColumn("training"), p.BarColumn(), p.MofNCompleteColumn(), p.TimeRemainingColumn())
            self.bar = p.Progress(*columns, console=p.Console(highlight=False))
            self.task = self.bar.add_task("training", total=total)
            self.bar.start()

    def line(self, text: str, style: str | None = None) -> None:
        if self.bar is not None:
            self.bar.console.print(text, style=style, markup=False, soft_wrap=True)
        elif self.enabled:
            print(text, flush=True)

    def advance(self, completed: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=completed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# the loop


def _all_reduce(values: list[float], where: Dist, device: torch.device, op=dist.ReduceOp.SUM) -> list[float]:
    if not where.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def _evaluate(model: nn.Module, val: Dataset, n: int, batch: int, where: Dist, device, amp) -> str:
    """The accuracy on the first ``n`` validation images (each rank taking every world-th one), as a line's text."""
    n = min(n, len(val))
    part = Subset(val, range(where.rank, n, where.world))
    correct = seen = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for x, y in DataLoader(part, batch_size=batch, shuffle=False):
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(x)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
    model.train(was_training)
    correct, seen = _all_reduce([correct, seen], where, device)
    return f"validation accuracy {correct / seen if seen > 0 else float('nan'):.3f} on {int(seen)} images"


def train(cfg: TrainConfig, where: Dist | None = None) -> tuple[int, nn.Module]:
    """Run ``cfg`` as rank ``where.rank`` of ``where.world`` (one process group for several): returns
    (0, or 143 after SIGTERM and a checkpoint; the unwrapped model). Bad settings: ``UsageError``."""
    where = where or launch_env()
    # Settings first: every rank refuses the same bad input before the process group exists.
    if cfg.batch % where.world:
        raise UsageError(f"--batch: the global batch {cfg.batch} does not split evenly across {where.world} processes")
    local_batch = cfg.batch // where.world
    if local_batch % cfg.accum:
        raise UsageError(
            f"--accum: each process's batch of {local_batch} does not split into {cfg.accum} equal micro-batches"
        )
    if not (math.isfinite(cfg.momentum) and 0 <= cfg.momentum < 1):
        raise UsageError(f"--momentum: must be in [0, 1), got {cfg.momentum}")
    if (cfg.resume or cfg.save_every) and not cfg.checkpoint:
        raise UsageError(f"{'--resume' if cfg.resume else '--save-every'} needs --checkpoint PATH")
    if cfg.checkpoint and os.path.isdir(cfg.checkpoint):
        raise UsageError(f"--checkpoint: {cfg.checkpoint} is a directory; give a file path")
    if cfg.checkpoint and not os.path.isdir(os.path.dirname(os.path.abspath(cfg.checkpoint))):
        raise UsageError(f"--checkpoint: the folder of {cfg.checkpoint} does not exist")
    device = _device(where)
    gpu = device.type == "cuda"
    size = cfg.size or (224 if gpu else CPU_SIZE.get(cfg.model.lower(), 28))
    dtype = cfg.dtype or ("bfloat16" if gpu else "float32")
    if dtype not in AMP:
        raise UsageError(f"--dtype: training runs in fp32, bf16 or fp16 (fp32 master weights), got {dtype}")
    train_set, val_set, source = load_data(cfg, size)
    steps_per_epoch = len(train_set) // cfg.batch
    if steps_per_epoch == 0:
        raise UsageError(f"--batch: the global batch {cfg.batch} is larger than the {len(train_set)} training images")
    resume_state, settings = None, dict(dataclasses.asdict(cfg), size=size, dtype=dtype)
    if cfg.resume and os.path.exists(cfg.checkpoint):
        resume_state = load_checkpoint(cfg.checkpoint)
        saved = resume_state.get("config", {})
        for k in _RESUME_MUST_MATCH:
            if k in saved and saved[k] != settings[k]:
                flag = "model" if k == "model" else f"--{k.replace('_', '-')}"
                raise UsageError(
                    f"{flag}: {settings[k]!r} differs from the checkpoint's {saved[k]!r} ({cfg.checkpoint}); "
                    "a resumed run must use the same settings"
                )
    _seed_everything(cfg.seed)
    model, name = build_model(cfg, size)

    if where.enabled:
        from datetime import timedelta

        timeout = timedelta(seconds=float(os.environ.get("CNNKERNELS_DIST_TIMEOUT", "1800")))
        dist.init_process_group("nccl" if gpu else "gloo", timeout=timeout)
    log = Progress(cfg.steps, where.main)
    stop = []  # SIGTERM appends; checked after each step, all ranks agreeing (a MAX all-reduce)
    previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    try:
        amp = AMP[dtype]
        model.to(device)
        _materialise(model, size, device)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
        step = 0
        if resume_state is not None:
            model.load_state_dict(resume_state["model"])
            optimizer.load_state_dict(resume_state["optimizer"])
            if resume_state.get("scaler"):
                scaler.load_state_dict(resume_state["scaler"])
            step = int(resume_state["step"])
            rngs = resume_state.get("rng") or []
            if len(rngs) == where.world:  # the same ranks: each continues its own random streams
                _set_rng_state(rngs[where.rank], device)
        net = model
        if where.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(model, device_ids=[device.index] if gpu else None, bucket_cap_mb=cfg.bucket_cap_mb)
        micro = local_batch // cfg.accum
        workers = cfg.workers if cfg.workers is not None else min(4, os.cpu_count() or 1) if gpu else 0
        val_images = cfg.val_images if cfg.val_images is not None else (10**9 if gpu else cfg.batch)

        if not gpu:
            log.line(f"No GPU: training under Triton's interpreter at {size}x{size} (slow; correctness only).")
        ranks = f" on {where.world} processes ({local_batch} each)" if where.enabled else ""
        log.line(
            f"training {name} on {source}, batch {cfg.batch}{ranks}, lr {cfg.lr}, {cfg.steps} steps, "
            f"{dtype}{'' if amp is None else ' autocast, fp32 master weights'}"
        )
        if resume_state is not None:
            log.line(f"resumed from {cfg.checkpoint} at step {step}")

        def checkpoint(at_step: int) -> None:  # a collective: every rank takes part
            if not cfg.checkpoint:
                return
            rngs = [_rng_state(device)]
            if where.enabled:
                rngs = [None] * where.world
                dist.all_gather_object(rngs, _rng_state(device))
            if where.main:
                state = {
                    "format": CHECKPOINT_FORMAT,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "step": at_step,
                    "epoch": at_step // steps_per_epoch,
                    "step_in_epoch": at_step % steps_per_epoch,
                    "world_size": where.world,
                    "rng": rngs,
                    "config": settings,
                }
                save_checkpoint(cfg.checkpoint, state)
            if where.enabled:
                dist.barrier()

        sampler = DistributedSampler(train_set, num_replicas=where.world, rank=where.rank, shuffle=True, seed=cfg.seed)
        start, first_step = time.perf_counter(), step
        val = None
        while step < cfg.steps:
            epoch, offset = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch)
            loader = DataLoader(
                train_set,
                batch_size=local_batch,
                sampler=list(sampler)[offset * local_batch :],  # where a resumed epoch picks up
                drop_last=True,
                num_workers=workers,
                pin_memory=gpu,
                generator=torch.Generator().manual_seed(cfg.seed + epoch),
            )
            for x, y in itertools.islice(loader, min(steps_per_epoch - offset, cfg.steps - step)):
                x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                y = y.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per micro-batch
                correct = torch.zeros((), device=device)
                for j, (xs, ys) in enumerate(zip(x.split(micro), y.split(micro))):
                    # DDP all-reduces in the backward of the last micro-batch only.
                    sync = net.no_sync() if where.enabled and j < cfg.accum - 1 else contextlib.nullcontext()
                    with sync:
                        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                            logits = net(xs)
                            loss = F.cross_entropy(logits.float(), ys) / cfg.accum
                        scaler.scale(loss).backward()
                    loss_sum += loss.detach()
                    correct += (logits.argmax(1) == ys).sum()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                if step % cfg.log_every == 0 or step == cfg.steps:
                    sums = _all_reduce([loss_sum.item(), correct.item() / local_batch], where, device)
                    loss_avg, acc = (v / where.world for v in sums)  # means over the ranks
                    elapsed = time.perf_counter() - start
                    eta = elapsed / (step - first_step) * (cfg.steps - step)
                    log.line(
                        f"step {step:4d}/{cfg.steps}  loss {loss_avg:.4f}  accuracy {acc:.3f}  "
                        f"{(step - first_step) * cfg.batch / elapsed:,.1f} images/s  "
                        f"{_secs(elapsed)} elapsed, ETA {_secs(eta)}"
                    )
                log.advance(step)
                if step % steps_per_epoch == 0 and val_set is not None:
                    val = _evaluate(model, val_set, val_images, local_batch, where, device, amp)
                    log.line(f"epoch {step // steps_per_epoch}: {val}")
                if _all_reduce([len(stop)], where, device, dist.ReduceOp.MAX)[0]:  # all ranks stop at the same step
                    checkpoint(step)
                    saved = (
                        f"checkpoint saved at step {step} to {cfg.checkpoint}" if cfg.checkpoint else "no --checkpoint"
                    )
                    log.line(f"SIGTERM: stopped after step {step}/{cfg.steps}; {saved}", style="bold")
                    return SIGTERM_EXIT, model
                if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                    checkpoint(step)
        checkpoint(step)
        if val_set is not None and (val is None or step % steps_per_epoch):
            val = _evaluate(model, val_set, val_images, local_batch, where, device, amp)
        val = val or f"no validation set (no t10k-* idx files in {cfg.data})"
        done = f"done: {step} steps in {_secs(time.perf_counter() - start)}, {val}"
        if cfg.checkpoint:
            done += f"; checkpoint {cfg.checkpoint}"
        log.line(done, style="bold green")
        return 0, model
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        log.close()
        if dist.is_initialized():
            net = None  # DDP's reducer is freed before its process group: freed after, it can hang
            dist.destroy_process_group()
