"""GRPO's forward/backward with each distinct prompt computed once for all its completions.

TRL scores a micro-batch as rows of left-padded prompt + right-padded completion, so a prompt of P
tokens with G completions of T tokens costs G x (P + T) positions, plus padding to the longest
prompt. On MedQA prompts (about 250 tokens) with 8 completions of 64 tokens that is about 2,500
positions, of which 750 are distinct work. :class:`SharedPromptGRPOTrainer` runs each distinct
prompt (without padding) through the backbone once, keeps its key/value states in the autograd
graph, repeats them for the prompt's completions and runs only the completion tokens on top: the
same log-probabilities, entropies, loss and gradients (the backward of the repeat sums what each
completion sends back into the prompt), computed on about 3x fewer positions there.
"""

from __future__ import annotations

from trl import GRPOTrainer


class SharedPromptGRPOTrainer(GRPOTrainer):
    """A GRPOTrainer whose per-token log-probabilities share each prompt's forward pass among its rows.

    Falls back to TRL's own computation where sharing does not apply: a distributed-wrapped model (its
    gradient synchronisation hooks onto the wrapper's forward), gradient checkpointing (it drops the
    cache), multimodal inputs, MoE auxiliary losses, or cache layers that are not plain (sliding window).
    """

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, compute_aux_loss=False, **extra
    ):
        if not self._can_share_prompts(model, compute_aux_loss, extra):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss, **extra
            )
        import torch

        prompts, completions = input_ids[:, :-logits_to_keep], input_ids[:, -logits_to_keep:]
        prompt_mask, completion_mask = attention_mask[:, :-logits_to_keep], attention_mask[:, -logits_to_keep:]
        rows_of: dict[tuple[int, ...], list[int]] = {}
        for row in range(len(input_ids)):
            rows_of.setdefault(tuple(prompts[row][prompt_mask[row].bool()].tolist()), []).append(row)
        if min(map(len, rows_of)) < 2:  # nothing to cache ahead of the prompt's last token
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss, **extra
            )

        logps, entropies, order = [], [], []
        for ids, rows in rows_of.items():
            group_logps, group_entropy = self._score_group(model, list(ids), completions[rows], completion_mask[rows])
            logps.append(group_logps)
            entropies.append(group_entropy)
            order += rows
        back = torch.empty(len(order), dtype=torch.long, device=input_ids.device)
        back[torch.tensor(order, device=input_ids.device)] = torch.arange(len(order), device=input_ids.device)
        logps = torch.cat(logps).index_select(0, back)
        entropy = torch.cat(entropies).index_select(0, back) if compute_entropy else None
        return logps, entropy, None

    def _score_group(self, model, prompt: list[int], completions, completion_mask):
        """Log-probabilities and entropies of ``completions`` (rows x T) after one shared ``prompt``."""
        import torch

        rows, length = completions.shape
        device = completions.device
        with self.accelerator.autocast():
            # The backbone alone over all but the prompt's last token: no LM head on prompt positions.
            head = model.base_model(input_ids=torch.tensor([prompt[:-1]], device=device), use_cache=True)
            cache = head.cache
            cache.batch_repeat_interleave(rows)
            # The prompt's last token leads the segment, so the fused head's shift scores every completion token.
            segment = torch.cat([completions.new_full((rows, 1), prompt[-1]), completions], dim=1)
            labels = torch.cat([completions.new_full((rows, 1), -100), completions.masked_fill(completion_mask == 0, -100)], dim=1)
            positions = torch.arange(len(prompt) - 1, len(prompt) + length, device=device).expand(rows, -1)
            mask = torch.cat([completion_mask.new_ones(rows, len(prompt)), completion_mask], dim=1)
            out = model(input_ids=segment, attention_mask=mask, position_ids=positions, cache=cache, labels=labels, fused_lm_head=True)
        return out.log_probs, out.entropy

    def _can_share_prompts(self, model, compute_aux_loss: bool, extra: dict) -> bool:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if compute_aux_loss or any(value is not None for value in extra.values()) or self.args.gradient_checkpointing:
            return False
        if self.accelerator.unwrap_model(model) is not model:
            return False
        return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
