"""retrieval: text -> image search with a calibrated 0-1 relevance score.

Pipeline (one module each): data -> encoders -> projection -> reranker -> index_store -> search -> cli/server.
Heavy imports (torch, transformers, faiss) are lazy so that `retrieve --help` and a cold query stay fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "Retriever", "SearchHit", "QueryResult"]


def __getattr__(name: str):  # lazy: importing the package must not import torch
    if name in {"Retriever", "SearchHit", "QueryResult"}:
        from retrieval import search

        return getattr(search, name)
    raise AttributeError(name)
