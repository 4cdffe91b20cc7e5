"""Tiny shared helpers for side-by-side benchmarks: best-of-N timing, thread pinning, tables."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def best_of(fn: Callable[[], T], repeat: int = 3, warmup: int = 0) -> tuple[float, T]:
    """Run ``fn`` ``warmup`` + ``repeat`` times; return (fastest wall time in s, last result)."""
    for _ in range(warmup):
        fn()
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out  # type: ignore[return-value]


@contextmanager
def threads(n: int | None):
    """Pin torch and BLAS/OpenMP pools to ``n`` threads (None: leave as they are)."""
    if not n:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(old)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Plain fixed-width text table."""
    cells = [[str(h) for h in headers]] + [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r]
                                          for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in cells]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)
