"""A store on an S3-compatible server: the same atomic publication, catalog and sweep lookup as on disk."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from storage import datasets
from storage.catalog import open_catalog, read_only_query, sweep_cells
from storage.store import COMPLETE_MARKER, Store, StoreError


@pytest.fixture
def remote(s3_location) -> Store:
    return Store(f"{s3_location}/{uuid.uuid4().hex[:8]}")


def publish_sweep(store: Store, sweep_id: str, name: str, cells: list[str]) -> None:
    rows = [{"sweep_id": sweep_id, "sweep_name": name, "cell_id": cell} for cell in cells]

    def build(out):
        datasets.SWEEPS.write(rows, out)
        (out / "model").mkdir()
        (out / "model" / "weights.bin").write_bytes(b"\0" * 1000)
        return {"sweep_name": name, "cells": len(rows), "recorded_at": datetime.now(UTC).isoformat()}

    store.publish("sweeps", sweep_id, build)


def test_a_published_artifact_reads_back_through_the_catalog_and_a_local_copy(remote):
    assert not remote.exists()
    publish_sweep(remote, "s1", "first", ["a", "b"])
    assert remote.exists() and remote.marker("sweeps", "s1")["cells"] == 2
    assert datasets.SWEEPS.read(remote, "s1").num_rows == 2
    local = remote.local("sweeps", "s1")
    assert (local / "model" / "weights.bin").stat().st_size == 1000
    assert (local / COMPLETE_MARKER).is_file() and remote.local("sweeps", "s1") == local
    count = open_catalog(remote).execute("select count(*) from sweeps where sweep_name = 'first'").fetchone()
    assert count == (2,) == read_only_query(remote, "select count(*) from sweeps").fetchone()


def test_files_without_their_marker_are_invisible_and_the_newest_sweep_is_found(remote):
    publish_sweep(remote, "s1", "first", ["a"])
    publish_sweep(remote, "s2", "second", ["b", "c"])
    datasets.write_parquet(
        [{"sweep_id": "s3", "sweep_name": "half", "cell_id": "x"}],
        datasets.SWEEPS.schema,
        remote.fs.open(remote.url("sweeps", "s3", datasets.SWEEPS.file), "wb"),
    )
    names = open_catalog(remote).execute("select distinct sweep_name from sweeps order by 1").fetchall()
    assert names == [("first",), ("second",)]
    assert not remote.is_complete("sweeps", "s3")
    assert sweep_cells(remote) == ("s2", "second", ["b", "c"])
    assert sweep_cells(remote, "first") == ("s1", "first", ["a"])


def test_a_failed_record_is_replaced_whole_and_a_complete_one_kept(remote):
    remote.publish("cells", "c1", lambda out: (out / "error.txt").write_text("boom") and {"status": "failed"})
    ok = lambda record: record["status"] == "ok"  # noqa: E731
    remote.publish("cells", "c1", lambda out: {"status": "ok", "by": "first"}, keep_existing=ok)
    kept = remote.publish("cells", "c1", lambda out: {"status": "ok", "by": "second"}, keep_existing=ok)
    assert kept["by"] == "first" == remote.marker("cells", "c1")["by"]
    assert not remote.fs.exists(remote.url("cells", "c1", "error.txt"))


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("s3://key:secret@bucket/store", "give credentials through the environment"),
        ("nosuchfs://bucket/store", "nosuchfs:// stores need a filesystem package"),
    ],
)
def test_unusable_store_urls_are_refused_with_the_fix(s3_location, location, message):
    with pytest.raises(StoreError, match=message) as refused:
        Store(location)
    assert "secret" not in str(refused.value)


def test_a_missing_bucket_is_refused_before_any_work(s3_location):
    with pytest.raises(StoreError, match="check the URL, that the bucket exists"):
        Store("s3://no-such-bucket/store").check_reachable()
