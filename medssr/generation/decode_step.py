"""One decode step of a Llama-family model (Llama, Qwen2, Qwen3) on CPU, computed from the model's own weights.

On a 2-core CPU a SmolLM2 decode step with a few rows is not bound by arithmetic but by the ~6,200
operators transformers' forward dispatches for it (module calls, mask building, separate q/k/v and
gate/up projections, a cache update and a dtype cast per layer). Every GRPO rollout and every served
token pays that floor once per generated token. :class:`FusedDecodeStep` computes the same step with
fewer operators:

- q, k and v are one matmul, and so are gate and up (weights concatenated once, re-made only when a
  parameter changed: an optimizer step writes them in place, which bumps their version counter);
- the rotary embedding is applied to q and k together;
- the new position is written into the :class:`~medssr.generation.kv_cache.GrowingLayer` in place, and
  attention is one SDPA call per layer on the key/value heads, each with its group's queries packed as
  transformers packs them for one query token when rows are padded. Unpadded, transformers calls SDPA's
  grouped-query mode instead, which in bf16 on CPU took 8x as long (2.9 vs 0.36 ms for 16 rows of
  SmolLM2's 260 positions): the same attention, one key/value head at a time;
- under a bf16 autocast (a trainer's mixed precision on CPU) the matmuls run on bf16 copies of the
  weights made once, instead of autocast casting them again at every step, and the cache is held in
  bf16 (SDPA under autocast would cast every cached position again at every step);
- bf16 weights are prepacked in oneDNN's layout once (``linear`` on a plain bf16 weight reorders it at
  every call, about half of a few-row matmul's time).

:meth:`FusedDecodeStep.forward` also prefills prompts (outside autocast), every prompt of a call in one
pass: the forward pass's own per-prompt arithmetic (causal SDPA over one prompt's positions), with the
fused and prepacked matmuls over all prompts' tokens at once. ``bench/decode_step.py``, SmolLM2 in bf16
on 2 cores: one 113-token prompt 104 ms against 121 ms by the forward pass, 16 prompts (1354 tokens)
1.11 s against 2.05 s.

The arithmetic is otherwise transformers' own, operation for operation, so the logits (and a prefill's
keys and values) are those of the model's forward pass (``tests/test_decode_step.py`` compares them:
bitwise in bf16 and, for decode steps, under autocast).

It runs only in half precision (bf16 or fp16 weights, or under autocast): in float32 it measured no
faster than the forward pass (``bench/decode_step.py``: 1.01x to 1.05x; a generate call of 8 MedQA
prompts x 4 samples, its second run: 0.94x), so float32 decoding stays the forward pass and holds no
weight copy. Models with anything this step does not compute (another architecture, an adapter or
quantized layer in place of a plain ``Linear``, another attention implementation, sliding-window layers,
offloaded weights) are decoded by the model's forward pass too. The concatenated q/k/v and gate/up
weights are a copy (in bf16 with oneDNN, every projection and the head are: the model's weights again
in bf16; under autocast, bf16 copies, as autocast makes for the prefill's forward pass).
"""

from __future__ import annotations

import itertools

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")


def _packs(dtype) -> bool:
    """Whether weights in ``dtype`` are prepacked for oneDNN: bf16 where oneDNN computes bf16 on this CPU.
    ``linear`` on a plain bf16 weight reorders it into oneDNN's blocked layout at every call; for a
    decode step's few rows that reorder is about half the matmul's time (SmolLM2's 49152 x 576 head,
    16 rows: 8.5 ms against 4.0 ms prepacked), and the results are the same bits."""
    import torch

    return dtype == torch.bfloat16 and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _matmul_weight(weight, dtype, pack: bool):
    """``weight`` in the matmul dtype, prepacked when ``pack`` (a copy then, in oneDNN's own layout)."""
    import torch

    weight = weight.detach().to(dtype)
    return torch.ops.mkldnn._reorder_linear_weight(weight) if pack else weight


def _linear(x, weight, bias):
    """``x @ weight.T + bias`` for a plain or a prepacked weight."""
    import torch

    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return torch.nn.functional.linear(x, weight, bias)


class _Weights:
    """One layer's projection weights in the matmul dtype, q/k/v and gate/up each concatenated."""

    def __init__(self, layer, dtype, pack: bool):
        import torch

        attention, mlp = layer.self_attn, layer.mlp
        cast = lambda tensor: None if tensor is None else tensor.detach().to(dtype)  # noqa: E731

        def weight(*projections):
            # One projection's weight is used as it is (no copy unless cast or packed); several are concatenated.
            joined = torch.cat([p.weight for p in projections]) if len(projections) > 1 else projections[0].weight
            return _matmul_weight(joined, dtype, pack)

        def bias(*projections):
            return torch.cat([cast(p.bias) for p in projections]) if projections[0].bias is not None else None

        qkv = (attention.q_proj, attention.k_proj, attention.v_proj)
        self.qkv, self.qkv_bias = weight(*qkv), bias(*qkv)
        self.o, self.o_bias = weight(attention.o_proj), cast(attention.o_proj.bias)
        gate_up = (mlp.gate_proj, mlp.up_proj)
        self.gate_up, self.gate_up_bias = weight(*gate_up), bias(*gate_up)
        self.down, self.down_bias = weight(mlp.down_proj), cast(mlp.down_proj.bias)


class FusedDecodeStep:
    """Next-token logits for one new token per row, over a cache of :class:`GrowingLayer` layers."""

    def __init__(self, model):
        self.model = model
        self.body = model.model
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = self.body.layers[0].self_attn.head_dim
        self.intermediate = config.intermediate_size
        self._layers: list[_Weights] | None = None
        self._lm_head = None
        self._signature = None

    @classmethod
    def for_model(cls, model) -> "FusedDecodeStep | None":
        """The step for ``model`` (on CPU), or None where it would not compute what the model's forward pass does."""
        import torch

        config = getattr(model, "config", None)
        body = getattr(model, "model", None)
        if config is None or getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES or body is None:
            return None
        if model.device.type != "cpu":  # built and measured for CPU, where dispatching operators is a cost
            return None
        if getattr(config, "_attn_implementation", None) != "sdpa" or getattr(config, "pretraining_tp", 1) != 1:
            return None
        if any(kind != "full_attention" for kind in (getattr(config, "layer_types", None) or ["full_attention"])):
            return None
        if type(getattr(model, "lm_head", None)) is not torch.nn.Linear or getattr(model, "logits_scaling", None):
            return None
        if any(hasattr(module, "_hf_hook") for module in model.modules()) or any(p.is_meta for p in model.parameters()):
            return None  # offloaded weights arrive through accelerate's hooks, which this step does not call
        for layer in getattr(body, "layers", []):
            attention, mlp = layer.self_attn, layer.mlp
            projections = (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            if any(type(p) is not torch.nn.Linear for p in projections):
                return None  # an adapter (LoRA) or a quantized layer: its forward is not a plain matmul
        return cls(model)

    def computes(self, cache) -> bool:
        """Whether this step runs for ``cache`` now: its matmuls would be in half precision (bf16 or fp16
        weights, or an autocast to one), every layer writes in place, and the model is in a mode the step
        computes (attention dropout in training mode is the forward pass's)."""
        import torch

        from medssr.generation.kv_cache import GrowingLayer

        if self._matmul_dtype() == torch.float32 or (self.model.training and getattr(self.model.config, "attention_dropout", 0.0)):
            return False
        return cache is not None and all(type(layer) is GrowingLayer for layer in cache.layers)

    def _matmul_dtype(self):
        """The dtype the forward pass's matmuls run in: autocast's where it is on, else the activations'
        (the embedding's)."""
        import torch

        weight = self.body.embed_tokens.weight
        autocast = torch.is_autocast_enabled(weight.device.type)
        return torch.get_autocast_dtype(weight.device.type) if autocast else weight.dtype

    def _prepared(self, dtype) -> None:
        """Make the concatenated weights in ``dtype`` when there are none yet, the dtype changed, or a
        parameter was replaced or written (data pointer and version counter)."""
        signature = (dtype, tuple((p.data_ptr(), p._version) for p in self.model.parameters()))
        if signature == self._signature:
            return
        pack = _packs(dtype)
        self._layers = [_Weights(layer, dtype, pack) for layer in self.body.layers]
        self._lm_head = _matmul_weight(self.model.lm_head.weight, dtype, pack)
        self._signature = signature

    def prefills(self) -> bool:
        """Whether :meth:`forward` prefills prompts now: as :meth:`computes`, and outside autocast (under an
        autocast the forward pass keeps some prefill activations in float32, which this step does not)."""
        import torch

        device = self.body.embed_tokens.weight.device.type
        dropout = self.model.training and getattr(self.model.config, "attention_dropout", 0.0)
        # Beyond 256 per head transformers repeats the key/value heads instead of SDPA's grouped-query mode.
        gqa_as_transformers = self.heads == self.kv_heads or self.head_dim <= 256
        half = self._matmul_dtype() != torch.float32
        return half and not torch.is_autocast_enabled(device) and not dropout and gqa_as_transformers

    def __call__(self, tokens, mask, positions, cache):
        """Logits ``[rows, vocab]`` (float32) after feeding ``tokens`` ``[rows]`` at ``positions``
        ``[rows, 1]``; ``mask`` ``[rows, cached + 1]`` is the attention mask including the new token."""
        return self.forward(tokens, mask, positions, cache, ())[0]

    def forward(self, tokens, mask, positions, cache, prompts):
        """The rows' next-token logits as :meth:`__call__` (none when ``tokens`` is empty; then ``mask``,
        ``positions`` and ``cache`` are unused), and each of ``prompts`` (token ids) prefilled: its keys
        and values per layer ``[1, kv_heads, tokens, head_dim]`` and its last token's logits ``[vocab]``
        (float32), as the model's forward pass over that prompt alone computes them (:meth:`prefills` says
        when it may be given prompts). All tokens go through each matmul together, so the weights are
        read once per pass, not once per prompt."""
        import torch
        from torch.nn.functional import scaled_dot_product_attention

        device = tokens.device
        autocast = torch.is_autocast_enabled(device.type)
        rows = tokens.shape[0]
        lengths = [len(ids) for ids in prompts]
        if prompts:
            prompt_tokens = torch.tensor([token for ids in prompts for token in ids], dtype=torch.long, device=device)
            tokens = torch.cat([tokens, prompt_tokens])
        hidden = self.body.embed_tokens(tokens)  # [rows + prompt tokens, hidden], the activations' dtype
        matmul = self._matmul_dtype()
        self._prepared(matmul)
        attend = None if not rows or bool(mask.all()) else mask.bool()[:, None, None, :]
        groups = self.heads // self.kv_heads
        states: list[list[tuple]] = [[] for _ in prompts]
        with torch.autocast(device.type, enabled=False):
            if rows:
                cos, sin = self.body.rotary_emb(hidden, position_ids=positions)  # [rows, 1, head_dim]
            if prompts:
                # [1, 1, longest, head_dim]; a position's angle does not depend on the others'.
                at = torch.arange(max(lengths), device=device)[None]
                prompt_cos, prompt_sin = (t[:, None] for t in self.body.rotary_emb(hidden[None], position_ids=at))
            half = self.head_dim // 2
            q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
            for index, (layer, weights) in enumerate(zip(self.body.layers, self._layers)):
                attention = layer.self_attn
                x = layer.input_layernorm(hidden).to(matmul)
                qkv = _linear(x, weights.qkv, weights.qkv_bias)
                outputs = []
                if rows:
                    qk = qkv[:rows, : q_width + kv_width].view(rows, self.heads + self.kv_heads, self.head_dim)
                    value = qkv[:rows, q_width + kv_width :].view(rows, self.kv_heads, self.head_dim)
                    if hasattr(attention, "q_norm"):  # Qwen3: per-head norms before the rotary embedding
                        qk = torch.cat([attention.q_norm(qk[:, : self.heads]), attention.k_norm(qk[:, self.heads :])], dim=1)
                    rotated = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
                    qk = qk * cos + rotated * sin
                    query, key = qk[:, : self.heads], qk[:, self.heads :]
                    layer_cache = cache.layers[index]
                    if autocast:  # autocast runs SDPA in its lower precision
                        query = query.to(matmul)
                        if layer_cache.keys.dtype != matmul:
                            # Held in that precision from here on: SDPA would cast every cached position again
                            # at every step (8 % of a GRPO rollout), and a position rounds the same either way.
                            layer_cache.cast(matmul)
                    keys, values = layer_cache.update(key[:, :, None], value[:, :, None])
                    packed = query.reshape(rows, self.kv_heads, groups, self.head_dim)  # a key/value head's queries
                    out = scaled_dot_product_attention(packed, keys, values, attn_mask=attend, scale=attention.scaling)
                    outputs.append(out.reshape(rows, q_width))
                start = rows
                for prompt, length in enumerate(lengths):
                    # The forward pass's prefill of one prompt: [1, heads, tokens, head_dim] views, causal SDPA
                    # over the key/value heads (its grouped-query mode, as transformers calls it unpadded).
                    part = qkv[start : start + length]
                    start += length
                    qk = part[:, : q_width + kv_width].view(1, length, self.heads + self.kv_heads, self.head_dim)
                    value = part[:, q_width + kv_width :].view(1, length, self.kv_heads, self.head_dim).transpose(1, 2)
                    if hasattr(attention, "q_norm"):
                        qk = torch.cat([attention.q_norm(qk[:, :, : self.heads]), attention.k_norm(qk[:, :, self.heads :])], dim=2)
                    qk = qk.transpose(1, 2)
                    rotated = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
                    qk = qk * prompt_cos[:, :, :length] + rotated * prompt_sin[:, :, :length]
                    query, key = qk[:, : self.heads], qk[:, self.heads :]
                    states[prompt].append((key.contiguous(), value.contiguous()))  # not views holding q/k/v of every token
                    out = scaled_dot_product_attention(
                        query, key, value, scale=attention.scaling, is_causal=length > 1, enable_gqa=groups > 1
                    )
                    outputs.append(out.transpose(1, 2).reshape(length, q_width))
                out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
                hidden = hidden + _linear(out.to(matmul), weights.o, weights.o_bias)
                x = layer.post_attention_layernorm(hidden).to(matmul)
                gate_up = _linear(x, weights.gate_up, weights.gate_up_bias)
                x = layer.mlp.act_fn(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :]
                hidden = hidden + _linear(x, weights.down, weights.down_bias)
            if prompts:  # the head on the rows and each prompt's last token only
                last = torch.tensor([rows + end - 1 for end in itertools.accumulate(lengths)], device=device)
                hidden = torch.cat([hidden[:rows], hidden[last]])
            hidden = self.body.norm(hidden).to(matmul)
            logits = _linear(hidden, self._lm_head, self.model.lm_head.bias).float()
        return logits[:rows], list(zip(states, logits[rows:]))
