"""Indexing: walk a folder (`fs`) -> decode safely (`imageio`) -> embed in parallel with a cache (`embed`) -> child
detector -> write the index folder incrementally (`indexer`); `build` wires a model folder into it."""
