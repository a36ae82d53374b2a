"""The artifact store: atomic publication, first complete copy wins, no escape from the root."""

from __future__ import annotations

import pytest

from storage.store import COMPLETE_MARKER, Store, StoreError


def test_publish_moves_a_whole_folder_into_place_with_its_marker(tmp_path):
    store = Store(tmp_path)

    def build(out):
        (out / "data.txt").write_text("payload")
        return {"status": "ok", "rows": 1}

    record = store.publish("cells", "abc123", build)
    assert record == {"status": "ok", "rows": 1} == store.marker("cells", "abc123")
    assert (store.local("cells", "abc123") / "data.txt").read_text() == "payload"
    assert not list((tmp_path / ".tmp").iterdir())


def test_a_failing_build_leaves_nothing_behind(tmp_path):
    store = Store(tmp_path)

    def build(out):
        (out / "half.parquet").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.publish("cells", "abc123", build)
    assert not store.local("cells", "abc123").exists()
    assert not list((tmp_path / ".tmp").iterdir())


def test_a_complete_copy_published_meanwhile_is_kept_and_a_failed_one_replaced(tmp_path):
    store = Store(tmp_path)
    store.publish("cells", "abc", lambda out: {"status": "ok", "by": "first"})
    kept = store.publish(
        "cells",
        "abc",
        lambda out: {"status": "ok", "by": "second"},
        keep_existing=lambda r: r["status"] == "ok",
    )
    assert kept["by"] == "first" == store.marker("cells", "abc")["by"]
    store.publish("cells", "bad", lambda out: {"status": "failed"})
    store.publish("cells", "bad", lambda out: {"status": "ok"}, keep_existing=lambda r: r["status"] == "ok")
    assert store.marker("cells", "bad") == {"status": "ok"}
    assert (store.local("cells", "bad") / COMPLETE_MARKER).exists()


@pytest.mark.parametrize(
    ("kind", "fp"), [("cells", "../../etc"), ("../x", "abc"), ("cells", "a/b"), ("cells", "")]
)
def test_names_cannot_escape_the_store(tmp_path, kind, fp):
    with pytest.raises(StoreError, match="not a valid artifact name"):
        Store(tmp_path).local(kind, fp)


def test_a_store_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        Store(tmp_path / "file")
