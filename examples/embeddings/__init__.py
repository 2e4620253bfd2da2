"""Sentence embeddings online (HTTP) and offline (Dask collections) with one set of replicas.

``model``: all-MiniLM-L6-v2 (int8 ONNX) with its tokenizer, as sentence-transformers runs it.
``app``: the ``Embedder`` deployment and the FastAPI ingress (``dserve run examples.embeddings.app:app``).
``offline``: a dask DataFrame of generated texts embedded through the replicas, written to Parquet.
"""
