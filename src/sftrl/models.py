"""Getting, saving and loading every model of a study as a complete Hugging Face checkpoint.

Three sources, one interface:

* ``tiny`` -- a small ``LlamaForCausalLM`` and a character-level tokenizer (tokenizers ``WordLevel``
  wrapped in ``PreTrainedTokenizerFast``), both built offline from config. Nothing is downloaded.
* ``local`` -- any causal LM checkpoint on disk (``model.path``): Qwen2.5-7B-Instruct and friends load
  through ``AutoModelForCausalLM``; Llama-3.2-11B-Vision-Instruct (``model_type == "mllama"``) is
  reduced to its text model (``MllamaForCausalLM``), which is what the study fine-tunes and evaluates
  in its language-only setting.
* every later model (SFT, PPO, edits) -- a directory written by :func:`save_model`.

All checkpoints are safetensors, and every directory is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from sftrl.atomic import atomic_path
from sftrl.prompts import COMPACT_ALPHABET

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(ValueError):
    """A model path or model setting that cannot be used, with the reason and the fix."""


# --------------------------------------------------------------------------------------------
# The tiny model
# --------------------------------------------------------------------------------------------


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character of the compact template, plus pad/bos/eos/unk.

    Left padding (batched generation) and a BOS prepended to every sequence.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in COMPACT_ALPHABET:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters join back without spaces
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    return fast


def build_tiny_model(arch: dict, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM`` of the configured size (``model.tiny``)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch["hidden_size"],
        intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_layers"],
        num_attention_heads=arch["num_heads"],
        num_key_value_heads=arch["num_heads"],
        max_position_embeddings=arch["max_position_embeddings"],
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id, gc.eos_token_id = (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    gc.do_sample = False
    return model


# --------------------------------------------------------------------------------------------
# Loading and saving
# --------------------------------------------------------------------------------------------


def resolve_dtype(name: str) -> torch.dtype | str:
    """``auto`` picks bf16 on a GPU that supports it and fp32 on the CPU."""
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ModelError(f"model.dtype: expected one of auto, {', '.join(DTYPES)}; got {name!r}") from None


def check_checkpoint_dir(path: str | os.PathLike, key: str = "model.path") -> Path:
    """Fail with a message naming ``key`` unless ``path`` is a Hugging Face checkpoint directory
    the workflow can load (:func:`sftrl.checkpoints.checkpoint_dir_problems`: the same check as
    ``model.path``'s when the DAG is built)."""
    from sftrl.checkpoints import checkpoint_dir_problems

    problems = checkpoint_dir_problems(Path(path), f"{key}: {str(path)[:200]}")
    if problems:
        raise ModelError(problems[0])
    return Path(path)


def load_tokenizer(path: str | os.PathLike):
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"  # batched generation
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | os.PathLike, dtype: str = "auto", device: str | torch.device | None = None):
    """Load a causal LM from a checkpoint directory, reduced to its text model where needed."""
    path = check_checkpoint_dir(path)
    torch_dtype = resolve_dtype(dtype)
    config = AutoConfig.from_pretrained(path)
    if config.model_type == "mllama":
        # Llama-3.2-Vision: the study uses the language model only (no image in any prompt).
        from transformers import MllamaForCausalLM

        model = MllamaForCausalLM.from_pretrained(path, dtype=torch_dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    if device is not None:
        model.to(device)
    return model


def save_model(model, tokenizer, out_dir: str | os.PathLike, state_dict: dict | None = None) -> Path:
    """Save weights (safetensors), config, generation config and tokenizer; atomically.

    ``state_dict`` replaces the model's own (the gathered weights of a sharded multi-GPU run)."""
    out_dir = Path(out_dir)
    if hasattr(model, "merge_and_unload"):  # a peft model: merge LoRA so the checkpoint is plain
        model, state_dict = model.merge_and_unload(), None  # the merged module holds the weights
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    return out_dir


def make_base(cfg: dict, out_dir: str | os.PathLike) -> Path:
    """``models/base`` for a ``local`` source: the local weights, as a complete checkpoint.

    The local checkpoint is loaded (Mllama reduced to its text model) and saved, so every later
    stage reads one uniform layout. A missing or wrong ``model.path`` fails here, when the job
    starts -- a dry-run of the DAG never touches it.
    """
    path = cfg["model"].get("path")
    if not path:
        raise ModelError("model.path: required when model.source is 'local'")
    model = load_model(path, dtype=cfg["model"]["dtype"])
    tokenizer = load_tokenizer(path)
    return save_model(model, tokenizer, out_dir)


def apply_lora(model, lora: dict):
    """Wrap ``model`` with LoRA adapters (peft) as configured in ``sft.lora``."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
