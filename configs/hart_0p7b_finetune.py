r"""Fine-tuning the released HART-0.7B on an image-caption folder.

  python -m hart_jax.train --workdir=out/ft --config=hart_0p7b_finetune:\
hart=hart-0.7b-1024px,data=folder:/data/images,text_features=/data/f.npz
  ... ,train_only=diffusion_head+last_blocks:4     # the rest frozen
  ... ,lora_rank=16,lora_targets=q+k+v+out          # LoRA adapters only

Args (all but `res` and `hart` can also be set as --config.x.y overrides):
  hart           the official folder (llm/ + tokenizer/, as downloaded from
                 mit-han-lab/hart-0.7b-1024px) or a hart_jax workdir (an
                 imported one, or an earlier run) to start from; it is
                 `train.init_from`, and its tokenizer/ the frozen tokenizer.
  tokenizer      a tokenizer/ folder, if not hart's own (a training
                 workdir has none).
  res            1024 (default) | 512 | 256: the scale schedule and image
                 size; with the released flags every weight fits each.
  data           an image folder with captions in sidecar .txt files
                 (folder:/path), or any hart_jax.data source.
  text_features  a feature cache of the captions (python -m
                 hart_jax.cache_text_features, HART's Qwen2 encoder run
                 offline), or
  text_encoder   a local Qwen2-VL-1.5B-Instruct folder, run in the step.
  train_only     "+"-separated parts that train, the rest frozen and kept
                 out of the optimizer: diffusion_head, head, norms,
                 last_blocks:N. Empty (default): full fine-tuning.
  lora_rank      > 0: LoRA adapters of this rank on `lora_targets` (q, k,
                 v, out, gate, up, down), all else frozen unless
                 train_only names it; merged into the weights on export.
  lora_alpha     adapter scale alpha / rank (0: alpha = rank).
  steps, batch, lr   run length, global batch, peak learning rate (0: 1e-5
                 for full / partial fine-tuning, 1e-4 for LoRA).

HART's own fine-tuning recipe is unpublished; these are common starting
points: AdamW (0.9, 0.95), short warmup, EMA 0.999 (the EMA is what
exports as ema_model.bin), no weight decay on LoRA adapters.
"""

import ml_collections

from configs import common
from configs import hart_0p7b_1024
from configs import training_common as tc


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, hart="", tokenizer="", res=1024, data="",
                         text_features="", text_encoder="", train_only="",
                         lora_rank=0, lora_alpha=0.0,
                         lora_targets="q+k+v+out", steps=2000, batch=32,
                         lr=0.0)
  lora = arg.lora_rank > 0
  c = ml_collections.ConfigDict()
  c.stage = "hart"
  c.seed = 0
  c.mesh = tc.mesh(data=1, fsdp=-1)
  c.rules = tc.rules()
  c.model = hart_0p7b_1024.model_config(arg.res)
  c.model.scan_layers = True
  c.data = ml_collections.ConfigDict(dict(
      source=arg.data, image_size=arg.res, source_kwargs={}))
  tokenizer = arg.tokenizer or (f"{arg.hart.rstrip('/')}/tokenizer"
                                if arg.hart else "")
  c.tokenizer = ml_collections.ConfigDict(dict(folder=tokenizer))
  c.text_encoder = ml_collections.ConfigDict(dict(
      kind="cache" if arg.text_features or not arg.text_encoder else "qwen2",
      cache=dict(path=arg.text_features),
      qwen2=dict(path=arg.text_encoder),
      bytes=dict(width=256, depth=2, heads=4, seed=0)))
  c.train = tc.train(total_steps=arg.steps, batch_size=arg.batch,
                     log_every=10, ckpt_every=500)
  c.train.init_from = arg.hart
  c.optimizer = tc.optimizer(
      lr=arg.lr or (1e-4 if lora else 1e-5), warmup_steps=100,
      weight_decay=0.0 if lora else 0.05, ema_decay=0.999)
  c.finetune = ml_collections.ConfigDict(dict(
      train_only=arg.train_only, lora_rank=arg.lora_rank,
      lora_alpha=arg.lora_alpha, lora_targets=arg.lora_targets))
  c.sample = ml_collections.ConfigDict(dict(
      every=500, cfg=4.5, top_k=600,
      num_images=len(hart_0p7b_1024.PROMPTS),
      prompts=list(hart_0p7b_1024.PROMPTS)))
  c.export_dir = ""
  c.lock()
  return c
