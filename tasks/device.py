"""Where a training runs: the device a spec names, resolved on this machine; what it takes there
(autocast, TF32, batches copied from pinned memory); and one GPU per training among the processes of
one machine, planned as one CUDA_VISIBLE_DEVICES entry per worker."""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from storage.errors import UserError
from tasks.cell import DeviceName, Dtype

GPU_LOCKS = Path(tempfile.gettempdir()) / "scalelaw-gpus"  # one lock file per GPU of this machine
LEASE_POLL_SECONDS = 1.0


class DeviceError(UserError):
    """A spec that names a device this machine does not have."""


def resolve_device(name: DeviceName) -> torch.device:
    """The device type that `train.device` names on this machine; 'auto' is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("train.device is 'cuda' but this machine has no CUDA GPU; use 'auto' or 'cpu'.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("train.device is 'mps' but this machine has no Apple GPU; use 'auto' or 'cpu'.")
    if name not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"train.device {name!r} is not one of auto, cpu, cuda, mps; pick one of those.")
    return torch.device(name)


@dataclass(frozen=True)
class Placement:
    """The device one training runs on, and how tensors and numerics go there."""

    device: torch.device

    @property
    def name(self) -> str:
        """What `runs.device` records: 'cpu', 'mps', or the GPU's model name."""
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return self.device.type

    def autocast(self, dtype: Dtype) -> contextlib.AbstractContextManager:
        """bf16 autocast (fp32 master weights and optimizer state) when `dtype` says so."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def batch(self, rows: torch.Tensor) -> torch.Tensor:
        """A batch of token ids on the device: on CUDA copied from pinned memory without a sync."""
        if self.device.type != "cuda":
            return rows.to(self.device)
        return rows.pin_memory().to(self.device, non_blocking=True)

    def synchronize(self) -> None:
        """Wait for the device's queued work: timings must not end before the work they time."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@contextlib.contextmanager
def placement(name: DeviceName) -> Iterator[Placement]:
    """The device for one training, held for its duration: on CUDA a GPU of this machine that no other
    training holds (waiting for one to free up), with TF32 matmuls for the fp32 parts."""
    device = resolve_device(name)
    if device.type != "cuda":
        yield Placement(device)
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    visible = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())
    with gpu_lease(visible) as index:
        torch.cuda.set_device(index)
        yield Placement(torch.device("cuda", index))


def visible_gpus(cuda_visible_devices: str | None, device_count: int) -> list[str]:
    """The GPUs this process may use, by the ids CUDA_VISIBLE_DEVICES gives them (indices or UUIDs);
    unset, all `device_count` of them by index."""
    if cuda_visible_devices is None:
        return [str(index) for index in range(device_count)]
    return [entry.strip() for entry in cuda_visible_devices.split(",") if entry.strip()][:device_count]


def worker_gpu_plan(workers: int, gpus: list[str]) -> list[str]:
    """CUDA_VISIBLE_DEVICES for each of `workers` worker processes: one GPU each, never one GPU for two."""
    if workers > len(gpus):
        raise DeviceError(
            f"execution.workers {workers} exceeds the {len(gpus)} GPU(s) visible here, where cells train on "
            "CUDA (train.device auto or cuda); give at most one worker per GPU, or train.device cpu."
        )
    return gpus[:workers]


def gpus_for_workers(plan: list[str]) -> tuple[Callable[[Any], None], tuple]:
    """A process pool's initializer and its arguments that give each new worker the next GPU of `plan`
    as its CUDA_VISIBLE_DEVICES, before anything in it touches CUDA (the pool must use 'spawn')."""
    slots = multiprocessing.get_context("spawn").Queue()
    for gpu in plan:
        slots.put(gpu)
    return _take_gpu, (slots,)


def _take_gpu(slots: Any) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = slots.get(timeout=60)


@contextlib.contextmanager
def gpu_lease(gpus: list[str], locks: Path = GPU_LOCKS) -> Iterator[int]:
    """The index (into `gpus`) of a GPU that no other training on this machine holds, held until the
    block ends; waits while every one is held. A lock is an flock: a killed process lets its GPU go."""
    if not gpus:
        raise DeviceError("train.device is 'cuda' but CUDA_VISIBLE_DEVICES hides every GPU; unset it.")
    locks.mkdir(parents=True, exist_ok=True)
    while True:
        for index, gpu in enumerate(gpus):
            handle = (locks / f"gpu-{gpu}.lock").open("w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield index
            finally:
                handle.close()  # closing releases the flock
            return
        time.sleep(LEASE_POLL_SECONDS)
