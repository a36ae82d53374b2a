"""Nothing that a sweep persists is a pickle, checkpoints load without unpickling objects, and the
Prefect server listens on the loopback address unless told otherwise (with basic auth documented)."""

from __future__ import annotations

import ast
import inspect
import json
import zipfile
from pathlib import Path

from conftest import PREFECT_HOME, REPO, write_smoke_spec

from deployments import serve
from flows import cli

PICKLE_PROTOCOLS = range(2, 6)


def holds_a_pickle(path: Path) -> bool:
    """A pickle stream (protocol 2-5), or a zip with one inside (torch.save's format)."""
    with path.open("rb") as handle:
        head = handle.read(2)
    if len(head) == 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS:
        return True
    return zipfile.is_zipfile(path) and any(
        name.endswith(".pkl") for name in zipfile.ZipFile(path).namelist()
    )


def is_a_checkpoint(path: Path) -> bool:
    """A training checkpoint or WSD trunk snapshot in torch's archive format: read only with
    torch.load(weights_only=True), which refuses arbitrary objects (see the test below)."""
    return path.suffix == ".pt" and zipfile.is_zipfile(path)


def test_the_store_and_prefect_results_hold_no_pickles(smoke, tmp_path, scalelaw_here):
    (tmp_path / "empty.txt").write_text("")
    failing = write_smoke_spec(tmp_path / "spec.yaml", corpus={"source": str(tmp_path / "empty.txt")})
    status, _, _ = scalelaw_here(["run", "--spec", str(failing), "--store", str(tmp_path / "store")])
    assert status == 2  # a failed flow run, whose exception Prefect writes to its result storage

    store_files = [p for p in smoke["store"].rglob("*") if p.is_file()]
    assert not [p for p in store_files if holds_a_pickle(p) and not is_a_checkpoint(p)]
    weights = {
        p.name for p in store_files if p.parent.name == "model" and p.suffix in (".bin", ".safetensors")
    }
    assert weights == {"model.safetensors"}

    results = [p for p in (Path(PREFECT_HOME) / "storage").rglob("*") if p.is_file()]
    assert not [p for p in results if holds_a_pickle(p)]
    written = [json.loads(p.read_bytes()) for p in results]  # a pickle, in base64 or not, is no JSON
    serializers = {record["metadata"]["serializer"]["type"] for record in written if "metadata" in record}
    assert serializers == {"json"}
    assert any("__exc_type__" in record for record in written), "the failed run's exception was not written"
    print(f"scanned {len(store_files)} store files and {len(results)} Prefect results: no pickles")


def test_every_torch_load_refuses_arbitrary_objects():
    calls = []
    for path in (REPO / folder for folder in ("flows", "tasks", "storage", "deployments")):
        for source in path.rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                    calls.append((source.name, {k.arg: ast.unparse(k.value) for k in node.keywords}))
    assert calls, "no torch.load found: the checkpoint code moved"
    assert all(keywords.get("weights_only") == "True" for _, keywords in calls), calls


def test_the_server_binds_the_loopback_address_by_default():
    assert cli._parser().parse_args(["serve"]).host == "127.0.0.1"
    for function in (serve.serve_project, serve.prefect_server):
        assert inspect.signature(function).parameters["host"].default == "127.0.0.1"


def test_the_readme_says_how_to_open_the_server_safely():
    readme = (REPO / "README.md").read_text()
    assert "## Security" in readme
    assert "PREFECT_SERVER_API_AUTH_STRING" in readme and "PREFECT_API_AUTH_STRING" in readme
