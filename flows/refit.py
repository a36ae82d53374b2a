"""Re-fit a stored sweep's laws and report without training anything."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows.spec import FitSpec
from flows.sweep import FLOW_RESULTS, fit_and_report
from storage.catalog import sweep_cells
from storage.store import DEFAULT_STORE, Store


@flow(name="refit-sweep", **FLOW_RESULTS)
def refit_sweep(
    store: str = DEFAULT_STORE,
    sweep_name: str | None = None,
    params_kind: Literal["nonembedding", "total"] = "nonembedding",
    compute_kind: Literal["6nd", "with_attention"] = "6nd",
    target: Literal["nats", "bits_per_byte"] = "nats",
    bootstrap: int = 200,
    holdout_fraction: float = 0.25,
    huber_delta: float = 1e-3,
) -> dict[str, Any]:
    """Fit every law form to the newest stored sweep (of that name) and render its report."""
    stored = Store(store)
    sweep_id, name, cell_ids = sweep_cells(stored, sweep_name)
    options = FitSpec(
        params_kind=params_kind,
        compute_kind=compute_kind,
        target=target,
        bootstrap=bootstrap,
        holdout_fraction=holdout_fraction,
        huber_delta=huber_delta,
    )
    fits, report = fit_and_report(stored.location, name, cell_ids, **options.model_dump())
    return {"sweep_id": sweep_id, "store": stored.location, "fits": fits, "report": report["path"]}
