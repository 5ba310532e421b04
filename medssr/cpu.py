"""Which precision this CPU computes fast: bfloat16 only where it has native bf16 instructions.

On a CPU without them, bf16 matmuls are emulated and slower than float32: an AVX2 machine's generator gave
45.8 tokens/s in float32 and 22.6 in bf16 on the same workload (32 benchmark questions x n=4 x 128 tokens).
With AVX-512 BF16 or AMX, bf16 runs natively and decoding many rows is faster than in float32
(docs/benchmarks.md). ``dtype: auto`` and ``bf16: null`` resolve through :func:`cpu_prefers_bf16`.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""/proc/cpuinfo flags of x86 CPUs that compute bf16 natively."""


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags from the ``flags`` line of ``/proc/cpuinfo`` (empty where there is none)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def prefers_bf16(flags: Iterable[str]) -> bool:
    """Whether a CPU with these flags computes bf16 natively (AVX-512 BF16 or AMX)."""
    return not NATIVE_BF16_FLAGS.isdisjoint(flags)


@lru_cache(maxsize=1)
def cpu_prefers_bf16() -> bool:
    """:func:`prefers_bf16` for this machine's CPU."""
    return prefers_bf16(cpu_flags())
