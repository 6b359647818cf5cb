"""Learning: course features -> image-grouped validation -> projection + reranker -> the heads model folder.

Only `model` (the saved artifact, `RetrievalModel`) is read at query time; the rest runs in `retrieve train`.
"""
