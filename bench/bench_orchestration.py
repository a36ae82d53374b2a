"""Orchestration overhead of a preset: wall time against the cells' own training time.

    python bench/bench_orchestration.py [--preset default] [--store DIR]

Runs the preset into a fresh store through the CLI, then again (everything complete), and prints:
the first run's wall time, the seconds of training (trunks and cells) divided by the workers (the
ideal wall time of the training alone), the overhead as a share of the wall time, the seconds of each stage
(from the times the store's artifacts were published), the mean number of busy cores before the
tokens and during the cell phase (from the CPU times of the run's processes, sampled twice a second),
and the rerun's wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from flows.spec import load_spec
from storage.catalog import open_catalog
from storage.store import COMPLETE_MARKER, Store
from tasks.checkpoints import snapshot_name

SAMPLE_SECONDS = 0.5


class CpuSampler:
    """The CPU seconds a process and all its descendants have used, sampled over wall-clock time.

    A process's last sample stands for it once it has exited, so up to SAMPLE_SECONDS of each
    short-lived process's time can be missed."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.cpu_by_pid: dict[int, float] = {}
        self.samples: list[tuple[float, float]] = []  # (wall-clock time, CPU seconds so far)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(SAMPLE_SECONDS):
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    times = process.cpu_times()
                    self.cpu_by_pid[process.pid] = times.user + times.system
                except psutil.NoSuchProcess:
                    continue
            self.samples.append((time.time(), sum(self.cpu_by_pid.values())))

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    def busy_cores(self, start: float, end: float) -> float:
        """Mean number of cores busy between two wall-clock times."""
        wall, cpu = np.array(self.samples).T
        return float((np.interp(end, wall, cpu) - np.interp(start, wall, cpu)) / (end - start))


def timed_run(preset: str, store: Path) -> tuple[float, CpuSampler]:
    started = time.perf_counter()
    command = [sys.executable, "-m", "flows.cli", "run", "--preset", preset, "--store", str(store)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    sampler = CpuSampler(process.pid)
    if process.wait() != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit status {process.returncode}")
    sampler.stop()
    return time.perf_counter() - started, sampler


def training_seconds(store: Path) -> tuple[int, float, float]:
    """Cells, the seconds of training the sweep did, and the longest training. A WSD cell's
    `train_seconds` include its trunk's up to the branch point, which the trunk trained once: they
    count once, as the trunks' seconds, and each cell adds its own past the branch (its seconds less
    those of the trunk's snapshot it started from)."""
    rows = (
        open_catalog(Store(store))
        .execute("select train_seconds, trunk_id, branch_tokens / (batch_size * context) from runs")
        .fetchall()
    )
    trunks = [json.loads(path.read_text()) for path in store.glob(f"trunks/*/{COMPLETE_MARKER}")]
    own_seconds = sum(
        seconds - (_seconds_at_snapshot(store / "trunks" / trunk, int(step)) if trunk else 0.0)
        for seconds, trunk, step in rows
    )
    slowest = max(seconds for seconds, _, _ in rows)
    return len(rows), own_seconds + sum(trunk["train_seconds"] for trunk in trunks), slowest


def _seconds_at_snapshot(trunk: Path, step: int) -> float:
    """The seconds of training a trunk had done at its snapshot of `step`."""
    import torch

    state = torch.load(trunk / snapshot_name(step), map_location="cpu", weights_only=True)
    return state["progress"]["train_seconds"]


def published(store: Path, kind: str) -> list[float]:
    """When each complete artifact of a kind was published (its marker's time), in wall-clock seconds."""
    return sorted(path.stat().st_mtime for path in store.glob(f"{kind}/*/{COMPLETE_MARKER}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--store", type=Path, help="a fresh folder (default: a temporary one)")
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="scalelaw-bench-")) / "store"
    shutil.rmtree(store, ignore_errors=True)
    workers = load_spec(args.preset).execution.workers

    started = time.time()
    first, sampler = timed_run(args.preset, store)
    ended = started + first
    cells, train_seconds, slowest = training_seconds(store)
    stages = {
        "corpus": published(store, "clean")[-1],
        "vocabulary": published(store, "vocab")[-1],
        "tokens": published(store, "tokens")[-1],
        "cells": published(store, "cells")[-1],
        "fits": published(store, "fits")[-1],
        "report": published(store, "reports")[-1],
        "exit": ended,
    }
    rerun, _ = timed_run(args.preset, store)
    ideal = train_seconds / workers
    overhead = first - ideal
    print(f"preset {args.preset}: {cells} cells, {workers} workers, {psutil.cpu_count()} cores")
    print(f"first run wall time           {first:8.1f} s")
    print(f"training time / workers       {ideal:8.1f} s (sum {train_seconds:.1f} s, max {slowest:.1f} s)")
    print(f"orchestration overhead        {overhead:8.1f} s = {overhead / first:.1%} of the wall time")
    previous = started
    for stage, finished in stages.items():
        label = "start, then the corpus" if stage == "corpus" else stage
        print(f"  {label:<34}{finished - previous:8.1f} s")
        previous = finished
    start_phase = (started + SAMPLE_SECONDS, stages["tokens"])  # none sampled before the first sample
    print(f"busy cores before the tokens  {sampler.busy_cores(*start_phase):8.2f} (mean from 0.5 s on)")
    cell_phase = (stages["tokens"], stages["cells"])
    print(f"busy cores during the cells   {sampler.busy_cores(*cell_phase):8.2f} (mean over the phase)")
    print(f"rerun, all cells complete     {rerun:8.1f} s = {rerun / first:.1%} of the first run")


if __name__ == "__main__":
    main()
