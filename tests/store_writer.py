"""A store writer for the crash tests: `python tests/store_writer.py STORE SEED` publishes artifacts
until it is killed, each a Parquet file of random size whose record says how to check it."""

from __future__ import annotations

import itertools
import random
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.store import Store

KIND = "payload"
SHARED = "shared"  # every writer also publishes this one; the first complete copy stays


def build(rng: random.Random) -> Callable[[Path], dict]:
    rows = rng.randrange(1_000, 50_000)
    values = pa.array(range(rows), pa.int64())

    def fill(folder: Path) -> dict:
        pq.write_table(pa.table({"value": values}), folder / "data.parquet", row_group_size=10_000)
        return {"rows": rows, "sum": rows * (rows - 1) // 2}

    return fill


def write_forever(root: str, seed: int) -> None:
    store, rng = Store(root), random.Random(seed)
    pa.array([0])  # pyarrow imports pandas on its first array: do that before the kills begin
    print("ready", flush=True)
    for n in itertools.count():
        store.publish(KIND, f"w{seed}n{n}", build(rng))
        if n % 4 == 0:
            store.publish(KIND, SHARED, build(rng))


if __name__ == "__main__":
    write_forever(sys.argv[1], int(sys.argv[2]))
