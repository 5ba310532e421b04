"""GRPO rollouts through medssr's continuous-batching generator, as TRL's ``rollout_func``.

TRL's own rollout without vLLM is ``model.generate`` on a left-padded batch, one row per completion:
every prompt is prefilled once per sample and finished rows keep decoding padding until the longest
ends. :func:`generator_rollout` instead runs the trainer's policy (the module the optimizer updates
in place, so each step samples from the current weights without a copy) through
:class:`~medssr.generation.transformers_backend.TransformersGenerator`: each distinct prompt is
prefilled once for all its samples, the system prompt all prompts share once per call, and a
finished row leaves the batch. It samples with the trainer's own settings (temperature, then top-k,
then top-p, at most ``max_completion_length`` tokens, ending on the trainer's end tokens) and returns
each token's log-probability at the sampling temperature, which is what the trainer's forward pass
computes for the same tokens.
"""

from __future__ import annotations

from medssr.generation.base import SamplingParams


def rollout_sampling(args) -> SamplingParams:
    """The SamplingParams of a GRPOConfig; settings the generator does not implement are refused rather
    than silently sampled without."""
    unsupported = {
        name: getattr(args, name)
        for name, inert in (("min_p", None), ("repetition_penalty", 1.0), ("generation_kwargs", None))
        if getattr(args, name) != inert
    }
    if unsupported:
        raise ValueError(f"the medssr rollout does not implement {unsupported}; use generation_backend 'trl' for these")
    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or 0, max_tokens=args.max_completion_length)


def generator_rollout(prompts: list, trainer) -> dict[str, list]:
    """``GRPOTrainer(rollout_func=generator_rollout)``: one completion per entry of ``prompts``.

    TRL hands over each prompt once per completion (its sampler repeats a prompt ``num_generations``
    times); identical prompts are sampled together, so a group's prompt is prefilled once.
    """
    from medssr.generation.transformers_backend import TransformersGenerator

    # The trainer's own tokenization (chat template and its kwargs): the ids it trains on are the ids sampled from.
    prompt_ids, images, _ = trainer._tokenize_prompts(prompts)
    if images is not None:
        raise ValueError("the medssr rollout is text-only; use generation_backend 'trl' for image prompts")
    prompt_ids = [[int(token) for token in ids] for ids in prompt_ids]
    rows_of: dict[tuple[int, ...], list[int]] = {}
    for row, ids in enumerate(prompt_ids):
        rows_of.setdefault(tuple(ids), []).append(row)

    model = trainer.accelerator.unwrap_model(trainer.model)
    generator = TransformersGenerator.on_model(model, trainer.processing_class, batch_size=len(prompts))
    generator.eos_token_ids = list(trainer.eos_token_ids)  # end where TRL's own rollout would
    was_training = model.training
    model.eval()  # no dropout while sampling, as model.generate would run
    try:
        # The trainer's own precision context (a no-op in float32). One block around the whole rollout also
        # keeps autocast's bfloat16 copies of the weights from one decode step to the next; TRL's per-call
        # autocast casts every weight again at every step.
        with trainer.accelerator.autocast():
            samples = generator.sample_ids([list(ids) for ids in rows_of], [len(rows) for rows in rows_of.values()], rollout_sampling(trainer.args))
    finally:
        model.train(was_training)

    completion_ids: list = [None] * len(prompts)
    logprobs: list = [None] * len(prompts)
    for rows, group in zip(rows_of.values(), samples, strict=True):
        for row, sample in zip(rows, group, strict=True):
            completion_ids[row], logprobs[row] = sample.ids, sample.logprobs
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}
