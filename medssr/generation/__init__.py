"""Generation backends behind one contract (:mod:`medssr.generation.base`); pick one with a config."""

from __future__ import annotations

from medssr.generation.base import Generator, GeneratorConfig, Prompt, SamplingParams

BACKENDS = ("transformers", "vllm", "openai")


def build_generator(config: GeneratorConfig) -> Generator:
    """The backend ``config.backend`` names, loaded and ready. Heavy imports happen only here."""
    if config.backend == "transformers":
        from medssr.generation.transformers_backend import TransformersGenerator

        return TransformersGenerator(config)
    if config.backend == "vllm":
        from medssr.generation.vllm_backend import VLLMGenerator

        return VLLMGenerator(config)
    if config.backend == "openai":
        from medssr.generation.openai_backend import OpenAIGenerator

        return OpenAIGenerator(config)
    raise ValueError(f"backend: unknown generation backend {config.backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Generator", "GeneratorConfig", "Prompt", "SamplingParams", "build_generator"]
