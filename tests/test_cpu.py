"""Precision by the CPU: bf16 only where the CPU computes it natively, float32 elsewhere."""

from __future__ import annotations

import pytest

from medssr.cpu import cpu_flags, prefers_bf16

AVX2 = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx avx avx2 fma bmi2"
AVX512 = AVX2 + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"


@pytest.mark.parametrize(("flags", "bf16"), [
    (AVX2, False),                                 # emulated bf16: half float32's speed
    (AVX512, False),                               # AVX-512 without its BF16 extension
    (AVX512 + " avx512_bf16", True),               # e.g. AMD Zen 4, Intel Cooper Lake
    (AVX512 + " amx_bf16 amx_tile amx_int8", True),  # Intel Sapphire Rapids
    ("", False),                                   # no flags line (another OS or architecture)
])
def test_bf16_is_chosen_only_with_native_bf16(flags, bf16):
    cpuinfo = f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: {flags}\nbogomips\t: 4000\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert cpu_flags(cpuinfo) == frozenset(flags.split())
    assert prefers_bf16(cpu_flags(cpuinfo)) is bf16


def test_auto_resolves_by_this_cpu_and_the_cache_key_records_what_it_resolved_to(monkeypatch):
    import torch

    from medssr import cpu
    from medssr.evaluation.cache import run_key
    from medssr.generation.base import GeneratorConfig, SamplingParams
    from medssr.generation.transformers_backend import resolve_dtype

    keys = {}
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(cpu, "cpu_prefers_bf16", lambda native=native: native)
        assert resolve_dtype("auto", "cpu") is dtype
        assert resolve_dtype("float32", "cpu") is torch.float32 and resolve_dtype("auto", "cuda") == "auto"
        keys[native] = run_key({"ref": "m"}, GeneratorConfig(model="m", device="cpu"), SamplingParams(), 4, "evaluate")
    assert (keys[True]["generator"]["dtype"], keys[False]["generator"]["dtype"]) == ("bfloat16", "float32")
