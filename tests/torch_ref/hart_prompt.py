"""HART's official prompt encoding, transcribed for tests (torch +
transformers), to check hart_jax.text.qwen2_prompt against.

A behavioural transcription of `encode_prompts` in mit-han-lab/hart
hart/utils/tools.py (commit e28a41f), not its code: each prompt is
tokenized alone by the transformers tokenizer, padded to max_length and
truncated; the mask is token != pad id; with the system prompt, its
tokens (truncated to max_length, not padded) are repeated per row with a
mask of ones and prepended, the model runs on the concatenation with its
default positions, and the first len(system) positions of the last hidden
state are cut off; the features are cast to float32.
"""

import torch


def _tokenize(tokenizer, text: str, max_length: int, padding: str):
  return tokenizer(text, return_tensors="pt", padding=padding,
                   max_length=max_length, truncation=True).input_ids[0]


def encode_prompts_ref(prompts, text_model, tokenizer, max_length: int,
                       system_prompt: str, use_system_prompt: bool):
  """(tokens, mask, position ids, features float32) as the official code
  returns them: tokens/mask/position ids [B, max_length], features
  [B, max_length, hidden]."""
  tokens = torch.stack([_tokenize(tokenizer, p, max_length, "max_length")
                        for p in prompts])
  mask = tokens != tokenizer.pad_token_id
  positions = torch.cumsum(mask, dim=1) - 1
  with torch.no_grad():
    if use_system_prompt:
      system = _tokenize(tokenizer, system_prompt, max_length, "longest")
      system = system[None].repeat(len(prompts), 1)
      # Ones shaped like the prompt mask, cut to the system length (the
      # system tokens are truncated to max_length, so this always fits).
      system_mask = torch.ones_like(mask)[:, :system.shape[1]]
      out = text_model(torch.cat([system, tokens], 1),
                       attention_mask=torch.cat([system_mask, mask], 1),
                       output_hidden_states=True)
      features = out.hidden_states[-1][:, system.shape[1]:]
    else:
      features = text_model(tokens, attention_mask=mask,
                            output_hidden_states=True).hidden_states[-1]
  return tokens, mask, positions, features.float()
