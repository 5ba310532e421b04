"""TRL's colocated vLLM rollouts (``use_vllm``) on vLLM's CUDA build and on its CPU build.

TRL 1.16 starts one engine inside each training process (``LLM(distributed_executor_backend=
"external_launcher")``) and copies the trainer's weights into it before each step's rollouts. Two things
differ on the CPU build, and are handled here:

- TRL's copy writes each tensor through the model's ``load_weights``. The CPU build repacks every linear
  layer's weight for its GEMM kernels once loaded and leaves an empty parameter behind, which that copy
  cannot write into. vLLM's own ``reload_weights`` restores the layers, loads, and repacks again: the sync
  goes through it there. It repacks a tied weight for its first owner only (the input embedding), so the
  other owners (the output layer of a model with tied embeddings) are repacked here: else the engine's
  logits would come from the weights it started with.
- TRL passes no key/value cache size, and the CPU build then reserves ``gpu_memory_utilization`` of the
  RAM. ``vllm_kv_cache_gib`` sets it instead (vLLM's ``VLLM_CPU_KVCACHE_SPACE``).

TRL passes no dtype either, and vLLM's ``auto`` computes a float32 checkpoint in bfloat16 on the CPU build
(float16 or bfloat16 on a GPU): the engine is given the trainer's dtype, so the rollouts come from the
policy being trained, not from a rounded copy of it.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager

from medssr.training.config import TrainingConfig

KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"


def require_vllm() -> bool:
    """vLLM importable (else ImportError naming how to install it); True for its CPU build."""
    from medssr.generation.vllm_backend import import_vllm, on_cpu

    import_vllm()
    return on_cpu()


@contextmanager
def engine_environment(config: TrainingConfig, bf16: bool, cpu: bool):
    """While TRL starts the engine: its dtype is the trainer's (bfloat16 with ``bf16``, else float32), and on
    the CPU build its key/value cache size is ``vllm_kv_cache_gib``."""
    from trl.generation import vllm_generation

    engine_class = vllm_generation.LLM
    vllm_generation.LLM = functools.partial(engine_class, dtype="bfloat16" if bf16 else "float32")
    kv_cache = str(config.vllm_kv_cache_gib) if cpu and config.vllm_kv_cache_gib else None
    before = os.environ.get(KV_CACHE_ENV)
    if kv_cache:
        os.environ[KV_CACHE_ENV] = kv_cache
    try:
        yield
    finally:
        vllm_generation.LLM = engine_class
        if kv_cache and before is None:
            del os.environ[KV_CACHE_ENV]
        elif kv_cache:
            os.environ[KV_CACHE_ENV] = before


def sync_by_reload(generation) -> None:
    """TRL's ``VLLMGeneration.sync_weights`` for the CPU build: the trainer's parameters (gathered as TRL
    gathers them) loaded through vLLM's ``reload_weights``, then the prefix cache dropped, as TRL does."""
    runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=generation._iter_named_params(), is_checkpoint_format=True)
    repack_shared_weights(runner.get_model())
    generation.llm.reset_prefix_cache()


def repack_shared_weights(model) -> None:
    """Repack each layer that shares a parameter with another (tied embeddings) from the parameter's values now."""
    owners: dict[int, list] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            owners.setdefault(id(parameter), []).append(module)
    for modules in owners.values():
        if len(modules) > 1:
            for module in modules:
                module.quant_method.process_weights_after_loading(module)


def adapt(trainer, cpu: bool) -> None:
    """Make a trainer's colocated engine sync its weights the way its vLLM build can."""
    if cpu:
        generation = trainer.vllm_generation
        generation.sync_weights = lambda: sync_by_reload(generation)


def engine_settings(trainer) -> dict:
    """What the colocated engine runs with, read back from its own configuration."""
    settings = trainer.vllm_generation.llm.llm_engine.vllm_config
    return {
        "device": str(settings.device_config.device_type),
        "dtype": str(settings.model_config.dtype).removeprefix("torch."),
        "tensor_parallel_size": settings.parallel_config.tensor_parallel_size,
        "gpu_memory_utilization": settings.cache_config.gpu_memory_utilization,
        "kv_cache_memory_bytes": settings.cache_config.kv_cache_memory_bytes,
    }
