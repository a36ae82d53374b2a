"""The catalog of datasets: every view users query derives from one declaration (kind, file, schema),
and shows exactly the declared columns, on an empty store and on one with files."""

from __future__ import annotations

import dataclasses

import pyarrow.parquet as pq

from storage import datasets
from storage.catalog import VIEWS, open_catalog
from storage.store import Store

# The views users query: their names are part of the interface.
USER_VIEWS = {
    "runs",
    "curves",
    "sweeps",
    "fits",
    "isoflop",
    "extrapolation",
    "verdict",
    "corpus_stats",
    "suggestions",
}


def view_columns(con, view: str) -> list[str]:
    return [row[0] for row in con.execute(f"describe {view}").fetchall()]


def publish(store: Store, dataset: datasets.Dataset, fp: str, rows: list[dict]) -> None:
    def build(out):
        dataset.write(rows, out)
        return {"status": "ok"}

    store.publish(dataset.kind, fp, build)


def test_the_views_are_the_declared_datasets_with_their_declared_columns_on_an_empty_store(tmp_path):
    assert set(VIEWS) == USER_VIEWS
    con = open_catalog(Store(tmp_path))
    for name, dataset in VIEWS.items():
        assert view_columns(con, name) == dataset.schema.names, name


def test_a_written_dataset_reads_back_with_its_schema_and_its_view_holds_its_rows(tmp_path):
    store = Store(tmp_path)
    row = {"fit_id": "f1", "rule": "span", "severity": "caution", "reason": "N spans 3x", "fix": "add N"}
    publish(store, datasets.VERDICT, "f1", [row])
    assert datasets.VERDICT.rows(store, "f1") == [row]
    assert datasets.VERDICT.read(store, "f1").schema.names == datasets.VERDICT.schema.names
    stored = pq.read_metadata(tmp_path / "fits" / "f1" / "verdict.parquet").metadata
    assert stored[b"scalelaw.schema_version"] == datasets.SCHEMA_VERSION.encode()
    con = open_catalog(store)
    assert con.execute("select rule, fix from verdict").fetchall() == [("span", "add N")]
    assert datasets.VERDICT.files(store) == [str(tmp_path / "fits" / "f1" / "verdict.parquet")]


def test_the_fits_view_has_no_sweep_id_even_over_files_written_with_it(tmp_path):
    """A fits artifact is keyed by its cells and options and shared by every sweep of them, so
    `fits` has no sweep_id; files from before kept an always-empty one, which stays out of the view."""
    store = Store(tmp_path)
    schema = datasets.FITS.schema
    old = schema.insert(1, datasets.SWEEPS.schema.field("sweep_id"))

    def build_old(out):
        datasets.write_parquet([{"fit_id": "old", "form": "chinchilla"}], old, out / datasets.FITS.file)
        return {}

    store.publish(datasets.FITS.kind, "old", build_old)
    publish(store, datasets.FITS, "new", [{"fit_id": "new", "form": "kaplan", "parameter": "N_c"}])
    con = open_catalog(store)
    assert "sweep_id" not in view_columns(con, "fits")
    assert set(view_columns(con, "fits")) == set(schema.names)
    assert con.execute("select fit_id, form from fits order by 1").fetchall() == [
        ("new", "kaplan"),
        ("old", "chinchilla"),
    ]


def test_a_filtered_read_returns_only_the_matching_rows(tmp_path):
    store = Store(tmp_path)
    docs = [
        {"doc_id": "a", "split": "train", "n_bytes": 1, "text": "x"},
        {"doc_id": "b", "split": "val", "n_bytes": 1, "text": "y"},
    ]
    publish(store, datasets.DOCS, "c1", docs)
    val = datasets.DOCS.read(store, "c1", filters=[("split", "=", "val")], cached=True)
    assert val.column("doc_id").to_pylist() == ["b"]


def test_each_typed_record_is_its_datasets_row_and_reads_back_equal(tmp_path):
    """The fits task writes dataclasses and the report reads them back: a field added to one side and
    not the other would be dropped on write (or fail on read) without this."""
    from tasks.checks import HeldOutCell, IsoflopProfile
    from tasks.fits import OptimalAllocation
    from tasks.verdict import Finding

    store = Store(tmp_path)
    records = {
        datasets.ISOFLOP: IsoflopProfile(
            1e12, 5, 1e5, 1e6, 3e5, 2e5, 4e5, 5e6, 3.0, True, 12.0, 0.1, -0.01, 3.0, "ok"
        ),
        datasets.EXTRAPOLATION: HeldOutCell("c1", 2e12, 1.5e12, 3.1, 3.0, -0.03),
        datasets.OPTIMAL: OptimalAllocation(1e13, 2e5, 1e5, 4e5, 8e6, 40.0, 2.9),
        datasets.VERDICT: Finding("span", "caution", "N spans 3x", "add N"),
    }
    for dataset, record in records.items():
        declared = [name for name in dataset.schema.names if name != "fit_id"]
        assert [field.name for field in dataclasses.fields(record)] == declared, dataset.file

    def build(out):
        for dataset, record in records.items():
            dataset.write([record], out, **({"fit_id": "f1"} if "fit_id" in dataset.schema.names else {}))
        return {"status": "ok"}

    store.publish(datasets.Kind.FITS, "f1", build)
    for dataset, record in records.items():
        assert dataset.records(store, "f1", type(record)) == [record]
    assert datasets.ISOFLOP.rows(store, "f1")[0]["fit_id"] == "f1"
