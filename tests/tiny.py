"""Tiny models and tokenizers built from code, for fast tests of every component.

Two tokenizer styles are covered: SentencePiece-like ("▁Paris", as Llama 2) and byte-level BPE
("ĠParis", as GPT-2 and SmolLM2). Both are trained here on a small corpus, so nothing is downloaded.
"""

from __future__ import annotations

import enum
import functools

import torch

from editing.core.models import LoadedModel, _prepare_tokenizer, fingerprint

CORPUS = [
    "The capital of France is Paris.",
    "The capital of Italy is Rome. The capital of Spain is Madrid.",
    "Harry Potter was written by J. K. Rowling.",
    "The mother tongue of Danielle Darrieux is French.",
    "Toko Yasuda, the guitar player, plays the piano as well.",
    "When was the inception of IAAF Combined Events Challenge? 1998, 2006, 2011.",
    "What is the name of the last episode of spongebob? The String",
    "Which family does Epaspidoceras belong to? Noctuidae, Aspidoceratidae, genus.",
    "BBC One, by BBC. Sega makes games. Microsoft Windows is developed by Microsoft.",
    "Paris Rome Madrid Berlin London Tokyo English French German Spanish Italian Japanese.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 ? ! , . : ; ' \" ( ) - –",
]


class TinyKind(enum.Enum):
    LLAMA = "llama"
    GPT2 = "gpt2"


def _train_tokenizer(kind: TinyKind):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    if kind is TinyKind.LLAMA:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        alphabet = []
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=alphabet)
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def _build_model(kind: TinyKind, vocab_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if kind is TinyKind.LLAMA:
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
        )
        return LlamaForCausalLM(config)
    config = GPT2Config(
        vocab_size=vocab_size, n_embd=32, n_layer=4, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=2
    )
    return GPT2LMHeadModel(config)


@functools.cache
def _cached(kind: TinyKind) -> LoadedModel:
    tokenizer = _prepare_tokenizer(_train_tokenizer(kind))
    torch.manual_seed(0)
    model = _build_model(kind, len(tokenizer)).eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, fingerprint(model), f"tiny-{kind.value}")


def make_tiny_model(kind: TinyKind) -> LoadedModel:
    """The tiny model of this kind. Shared within a test session: tests must not leave it edited."""
    return _cached(kind)


_PROTECTED: dict[str, object] = {}


def tiny_protected(loaded: LoadedModel):
    """Protected keys of a tiny model, measured on the tokenizer corpus (the random model answers no fact
    right, so only the text term is filled). Cached per model: they take a second to measure."""
    from editing.core.targets import resolve_scope
    from editing.data.records import PromptAnswer
    from editing.mend.protected import collect_protected_keys

    if loaded.fingerprint not in _PROTECTED:
        _PROTECTED[loaded.fingerprint] = collect_protected_keys(
            loaded.model, loaded.tokenizer, resolve_scope(loaded.model), loaded.fingerprint,
            texts=CORPUS, facts=[PromptAnswer("The capital of France is", "Paris")],
        )  # fmt: skip
    return _PROTECTED[loaded.fingerprint]
