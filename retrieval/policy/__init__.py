"""Legal policy: nothing describing or depicting a child (under 16) is shown in restricted countries.

lexicon (exact word rules) -> classifiers (learned text / image probes) -> apply (the single output choke point).
"""
from __future__ import annotations
