"""A small instruct-style chat model built on this machine: the stand-in for Qwen2.5-7B-Instruct in
the rehearsal of the paper path (``config/rehearsal.yaml``, ``sftrl chat-model``).

What it shares with the study's models, so that the paper path runs exactly as it would on them:

* a ``Qwen2ForCausalLM`` (grouped-query attention, untied embeddings and LM head, biases on
  q/k/v), saved as a plain Hugging Face checkpoint directory (config.json + safetensors);
* a byte-level BPE tokenizer trained here, with the ``tokenizers`` library, on the game's text
  (the study's prompt under both rules, its JSON answers and the verifier's feedback sentences);
* a chat template in the ChatML style of the Qwen instruct models (a default system turn, then
  ``<|im_start|>user`` / ``<|im_start|>assistant`` turns ending in ``<|im_end|>``);
* a ``generation_config`` that samples, with Qwen2.5-Instruct's settings (temperature 0.7,
  top-p 0.8, top-k 20, repetition penalty 1.05), so ``eval.decoding: model`` samples, seeded.

The weights are randomly initialised: the rehearsal checks that every stage runs on the paper
path (and that nothing takes a value meant for the tiny study); its accuracies mean nothing.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

# Qwen2.5-Instruct's chat template, reduced to plain text turns (no tools): a default system turn
# unless the dialogue brings its own, and the assistant header after the last turn when asked.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] != 'system' %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# The architecture of the rehearsal model: Qwen2 in miniature (a few million parameters).
ARCH = {
    "hidden_size": 192,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}
VOCAB_SIZE = 1024  # at most this many tokens; the game's text runs out of merges at 537
CORPUS_HANDS = 600  # hands per rule whose prompts, answers and feedback train the tokenizer


def game_corpus(hands: int = CORPUS_HANDS, seed: int = 0) -> list[str]:
    """The texts the tokenizer is trained on: the study's prompt and JSON answer for ``hands``
    ID and OOD hands, and the verifier's feedback to wrong attempts at them."""
    from sftrl.data import make_eval, make_sft, wrong_attempt
    from sftrl.game import check_formula, solve
    from sftrl.prompts import paper_feedback, paper_response

    rng = random.Random(seed)
    sft = make_sft(hands, seed, "paper", answer="random")
    ood = make_eval("ood", hands, seed + 1, "paper")
    texts = list(sft["prompt"]) + list(sft["completion"]) + list(ood["prompt"])
    for row in ood.iter_rows(named=True):
        solutions = solve(row["numbers"])
        texts.append(paper_response(row["cards"], "ood", rng.choice(solutions)))
        wrong = wrong_attempt(rng, row["cards"], row["numbers"], solutions)
        texts.append(paper_feedback(check_formula(wrong, row["numbers"])))
        texts.append(paper_feedback(check_formula(None, row["numbers"])))
    return texts


def build_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE tokenizer trained on ``texts``, with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
        model_max_length=ARCH["max_position_embeddings"],
    )


def build_model(tokenizer, seed: int = 0, arch: dict | None = None):
    """A randomly initialised ``Qwen2ForCausalLM`` for ``tokenizer``, sampling like Qwen2.5-Instruct."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        **(arch or ARCH),
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id, gc.bos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id, None
    gc.do_sample, gc.temperature, gc.top_p, gc.top_k, gc.repetition_penalty = True, 0.7, 0.8, 20, 1.05
    return model


def build_chat_model(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Build the rehearsal model and write it to ``out_dir`` (atomically); returns the path."""
    from sftrl.models import count_parameters, save_model

    tokenizer = build_tokenizer(game_corpus(seed=seed))
    model = build_model(tokenizer, seed=seed)
    out = save_model(model, tokenizer, out_dir)
    print(f"{out}: Qwen2ForCausalLM, {count_parameters(model):,} parameters, vocabulary {len(tokenizer)}")
    return out
