"""Nothing that a sweep persists is a pickle, checkpoints load without unpickling objects, and the
Prefect server `scalelaw serve` starts listens on the loopback address unless told otherwise, with the
basic-auth string the README documents."""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import pytest
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


class ServerStarted(Exception):
    """Raised in place of starting `prefect server start`: the test only needs what it was given."""


@pytest.fixture
def server_launch(monkeypatch):
    """`scalelaw ARGS` in-process with no Prefect API configured, up to the server's launch: the
    command line and environment the server would have started with."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    launched = {}

    def popen(argv, env, **_):
        launched.update(argv=argv, env=env)
        raise ServerStarted

    monkeypatch.setattr(serve.subprocess, "Popen", popen)

    def launch(args: list[str]) -> dict:
        with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(ServerStarted):
            cli.main(args)
        return launched

    return launch


def test_scalelaw_serve_starts_the_server_on_the_loopback_address(server_launch):
    """Catches a default host other than 127.0.0.1 anywhere between the CLI and `prefect server
    start`, and a --host that is dropped on the way (the server would bind Prefect's own default)."""
    argv = server_launch(["serve"])["argv"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    argv = server_launch(["serve", "--host", "0.0.0.0", "--port", "4321"])["argv"]
    assert argv[argv.index("--host") + 1 :] == ["0.0.0.0", "--port", "4321"]


def test_the_servers_auth_string_reaches_the_server(server_launch, monkeypatch):
    """The README's way to open the server safely is PREFECT_SERVER_API_AUTH_STRING in the environment
    of `scalelaw serve`; catches a server environment built without it (an open server)."""
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "admin:secret")
    env = server_launch(["serve", "--host", "0.0.0.0"])["env"]
    assert env["PREFECT_SERVER_API_AUTH_STRING"] == "admin:secret"
    assert env["PREFECT_UI_API_URL"].startswith("http://0.0.0.0:")
    readme = (REPO / "README.md").read_text()
    assert "PREFECT_SERVER_API_AUTH_STRING" in readme  # the variable tested is the one documented
