"""Slow: the backend contract against a real Milvus server (the `milvus` 2.3.5 package from PyPI: the C++ server,
embedded), and the CLI over `--index http://127.0.0.1:PORT` against the FAISS folder of the same images.

Milvus 2.3.5 binds its gRPC ports on every interface whatever its config says, so the server runs in a private
network namespace (`unshare -rn`: only a loopback device exists there) — nothing outside this test can reach it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent('''
    import json, re, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    fake_env, work = Path(sys.argv[2]), Path(sys.argv[3])
    import milvus
    from milvus import MilvusServer

    template = Path(milvus.__file__).parent / "data" / "config.yaml.template"
    loopback = work / "milvus.yaml"
    loopback.write_text(re.sub(r"(?m)^(\\s*)ip: # if not specify.*$", r"\\1ip: 127.0.0.1", template.read_text()))
    server = MilvusServer(template=str(loopback))
    server.set_base_dir(str(work / "milvus-data"))
    server.listen_address = "127.0.0.1"
    server.start()
    out = {}
    try:
        uri = f"http://127.0.0.1:{server.listen_port}"
        import faiss
        import numpy as np
        from index_store.errors import IdentityMismatchError
        from index_store.milvus import MilvusBackend
        from tests.test_backends import FIELDS, rows

        backend = MilvusBackend(uri)
        v, meta = rows(3000, dim=32, seed=3)
        backend.write(v, meta, FIELDS)
        got = backend.load(expect={"model_id": "heads-1"})
        out["count"], out["index_type"] = got.count, got.manifest.index_type
        out["meta_equal"] = got.meta["rel_path"].tolist() == meta["rel_path"].tolist()
        queries = rows(50, dim=32, seed=9)[0]
        _, ids = got.search(queries, 10)
        exact = faiss.IndexFlatIP(32)
        exact.add(v)
        _, ref = exact.search(queries, 10)
        names = meta["rel_path"].to_numpy()
        out["recall_at_10"] = float(np.mean([len(set(got.meta["rel_path"].to_numpy()[a]) & set(names[b])) / 10
                                             for a, b in zip(ids, ref)]))
        backend.write(v[:2000], meta[:2000], FIELDS)  # 1,000 rows removed
        out["count_after_delete"] = backend.load().count
        try:
            backend.load(expect={"model_id": "other"})
            out["identity_refused"] = False
        except IdentityMismatchError:
            out["identity_refused"] = True

        from click.testing import CliRunner
        from retrieval.cli import cli

        run = lambda *a: CliRunner().invoke(cli, [str(x) for x in a])
        res = run("build-index", fake_env / "images", "--index", uri, "--model", fake_env / "model", "--quiet")
        out["build"] = res.output.strip().splitlines()[-1] if res.output.strip() else ""
        hits = {}
        for loc in (fake_env / "idx", uri):
            res = run("query", "a dog on the grass", "--index", loc, "--json", "--policy", "audit", "-k", 5)
            hits[str(loc)] = [(h["image"], round(h["score"], 5)) for h in json.loads(res.output.splitlines()[-1])["hits"]]
        out["same_hits"] = hits[str(fake_env / "idx")] == hits[uri] and bool(hits[uri])
    finally:
        server.stop()
    print("RESULT " + json.dumps(out), flush=True)
''')


@pytest.mark.slow
def test_backend_contract_and_cli_against_a_real_milvus_server(fake_env: Path, tmp_path: Path) -> None:
    pytest.importorskip("milvus", reason="needs the embedded Milvus server: pip install milvus==2.3.5")
    pytest.importorskip("pymilvus")
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rn", "true"]).returncode:
        pytest.skip("needs `unshare -rn` (a private network namespace) to keep the server off the network")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    cmd = f"ip link set lo up && exec {sys.executable} {script} {ROOT} {fake_env} {tmp_path}"
    res = subprocess.run(["unshare", "-rn", "sh", "-c", cmd], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    out = json.loads(line[len("RESULT "):])
    assert out["count"] == 3000 and out["index_type"] == "milvus_hnsw" and out["meta_equal"]
    assert out["recall_at_10"] >= 0.95
    assert out["count_after_delete"] == 2000 and out["identity_refused"]
    assert "6 images indexed" in out["build"], out["build"]
    assert out["same_hits"]
