"""A frozen dataclass's hash computed once: the planner's caches (functools.lru_cache on GEMM
times, stage parts, memory) hash the same GpuSpec, ModelSpec and Gemm hundreds of thousands of times in
one search, and hashing every field each time was a third of a 1024-GPU search of DeepSeek-V3."""
from __future__ import annotations

import dataclasses

_FIELD_NAMES: dict = {}


def cached_hash(obj) -> int:
    """hash() of the dataclass's fields, stored on the instance the first time (it is frozen, so
    the fields cannot change afterwards; equality still compares the fields). The field names are
    read once per class."""
    values = obj.__dict__
    cached = values.get("_field_hash")
    if cached is None:
        names = _FIELD_NAMES.get(type(obj))
        if names is None:
            names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in dataclasses.fields(obj))
        cached = hash(tuple([values[name] for name in names]))
        object.__setattr__(obj, "_field_hash", cached)
    return cached
