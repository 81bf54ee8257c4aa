"""What the token detectors score: seeded random repeated sequences ``[BOS] + r + r``
(the default), a PromptSet, or a user's token batch, wrapped as a PromptSet so it streams
through the one batching routine; and the number of random sequences (``n_sequences``).

Example::

    tokens = random_repeated_tokens(model, T=50, n_sequences=32, seed=0)   # [32, 101]
"""

from __future__ import annotations

import numbers
import warnings

import torch
from jaxtyping import Int
from torch import Tensor

from ..backends import HookedTransformer
from ..checks import check_seed
from ..models import resolve_device
from ..prompts import PromptSet, check_prompt_set
from .scoring import tokenizer_bos_id

#: Default number of random repeated sequences the detectors score.
N_SEQUENCES = 32

Sequences = PromptSet | Int[Tensor, "batch pos"] | None


def resolve_n_sequences(n_sequences: int | None, n: int | None, *, stacklevel: int = 3) -> int:
    """The number of detector sequences from ``n_sequences=`` or its deprecated old name
    ``n=`` (a :class:`DeprecationWarning`; a :class:`TypeError` if both are given);
    :data:`N_SEQUENCES` when neither is.

    Example::

        resolve_n_sequences(None, None)      # 32
    """
    if n is None:
        return N_SEQUENCES if n_sequences is None else n_sequences
    if n_sequences is not None:
        raise TypeError(
            f"Give the number of sequences once: n_sequences={n_sequences!r} and its "
            f"deprecated old name n={n!r} were both given; keep n_sequences=."
        )
    warnings.warn("n= is deprecated; use n_sequences=", DeprecationWarning, stacklevel=stacklevel)
    return n


def random_repeated_tokens(
    model: HookedTransformer,
    T: int = 50,
    n_sequences: int | None = None,
    seed: int = 0,
    *,
    prepend_bos: bool | None = None,
    device: str | torch.device | None = None,
    n: int | None = None,
) -> Int[Tensor, "batch pos"]:
    """Seeded random sequences ``[BOS] + r + r``, each ``r`` of ``T`` tokens.

    Tokens are drawn uniformly (with replacement) from the ordinary vocabulary: ids in
    ``[0, min(d_vocab, len(tokenizer)))`` minus the tokenizer's ``all_special_ids``; for a
    model without tokenizer, any id in ``[0, d_vocab)``.

    Args:
        model: supplies the vocabulary, BOS convention and context length.
        T: length of the random block (the sequence has ``2T`` tokens, plus BOS).
        n_sequences: number of sequences (default :data:`N_SEQUENCES`, 32).
        seed: seeds the draw (a private ``torch.Generator``; global RNG untouched).
        prepend_bos: default ``model.cfg.default_prepend_bos`` when the tokenizer has a BOS
            token; never for a model without tokenizer.
        device: where to put the tokens (default CPU; the draw is always made on the CPU,
            so the tokens do not depend on the device).
        n: deprecated old name of ``n_sequences``.

    Example::

        tokens = random_repeated_tokens(model, T=50, n_sequences=32, seed=0)

    Returns:
        ``[n_sequences, 2T (+1)]`` token ids.
    """
    n = resolve_n_sequences(n_sequences, n)
    for name, value in (("T", T), ("n_sequences", n)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be a positive integer, got {value!r}.")
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    check_seed(seed)
    bos_id = tokenizer_bos_id(model)
    if prepend_bos is None:
        prepend_bos = bool(model.cfg.default_prepend_bos) and bos_id is not None
    if prepend_bos and bos_id is None:
        raise ValueError(
            "prepend_bos=True but this model has no tokenizer with a BOS token; "
            "pass prepend_bos=False."
        )
    length = 2 * T + int(prepend_bos)
    if length > model.cfg.n_ctx:
        raise ValueError(
            f"T={T} gives sequences of {length} tokens ({'BOS + ' if prepend_bos else ''}2 x {T}), "
            f"longer than the model's context n_ctx={model.cfg.n_ctx}. Use "
            f"T <= {(model.cfg.n_ctx - int(prepend_bos)) // 2}."
        )
    vocab = _ordinary_vocabulary(model)
    gen = torch.Generator().manual_seed(int(seed))
    block = vocab[torch.randint(len(vocab), (n, T), generator=gen)]
    parts = [block, block]
    if prepend_bos:
        parts.insert(0, torch.full((n, 1), bos_id, dtype=torch.long))
    tokens = torch.cat(parts, dim=1)
    return tokens if device is None else tokens.to(resolve_device(device))


def _ordinary_vocabulary(model: HookedTransformer) -> Int[Tensor, " vocab"]:
    size = model.cfg.d_vocab
    tok = model.tokenizer
    if tok is None:
        return torch.arange(size)
    size = min(size, len(tok))
    allowed = torch.ones(size, dtype=torch.bool)
    special = [i for i in tok.all_special_ids if 0 <= i < size]
    allowed[special] = False
    if not allowed.any():
        raise ValueError("This model's vocabulary has no ordinary (non-special) tokens.")
    return allowed.nonzero()[:, 0]


def as_prompt_set(
    model: HookedTransformer,
    data: Sequences,
    *,
    T: int,
    n_sequences: int,
    seed: int,
    attention_mask: Tensor | None,
) -> tuple[PromptSet, dict]:
    """Wrap the detectors' input as a PromptSet so it streams through ``iter_batches``;
    also the settings fields that say what was scored.

    A raw token batch becomes a PromptSet with no demonstrations (``k=0``) and dummy labels:
    only ``tokens``/``attention_mask`` are read by the detectors.

    Example::

        prompts, source = as_prompt_set(model, None, T=50, n_sequences=32, seed=0,
                                        attention_mask=None)
    """
    if isinstance(data, PromptSet):
        if attention_mask is not None:
            raise ValueError("attention_mask is only for a token tensor; a PromptSet has its own.")
        check_prompt_set(data, "sequences", model=model)
        return data, {"sequences": "prompts", "prompts": data.info()}
    if data is None:
        tokens = random_repeated_tokens(model, T, n_sequences, seed)
        mask = torch.ones_like(tokens)
        # the settings field keeps its name ``n`` (saved results carry it)
        source = {
            "sequences": "random_repeated",
            "T": int(T),
            "n": int(n_sequences),
            "seed": int(seed),
        }
    elif isinstance(data, Tensor):
        tokens = data[None] if data.ndim == 1 else data
        if tokens.ndim != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(
                f"Token data must be an integer [batch, pos] tensor, got dtype "
                f"{data.dtype} and shape {tuple(data.shape)}."
            )
        if tokens.shape[0] == 0 or tokens.shape[1] < 2:
            raise ValueError(
                f"Token data must hold at least one sequence of >= 2 tokens, got "
                f"shape {tuple(tokens.shape)}."
            )
        if tokens.shape[1] > model.cfg.n_ctx:
            raise ValueError(
                f"Sequences of {tokens.shape[1]} tokens exceed the model's context "
                f"n_ctx={model.cfg.n_ctx}; shorten them."
            )
        if int(tokens.min()) < 0 or int(tokens.max()) >= model.cfg.d_vocab:
            raise ValueError(
                f"Token ids must lie in [0, d_vocab={model.cfg.d_vocab}), got "
                f"[{int(tokens.min())}, {int(tokens.max())}]."
            )
        if attention_mask is None:
            mask = torch.ones_like(tokens)
        else:
            mask = attention_mask[None] if attention_mask.ndim == 1 else attention_mask
            if mask.shape != tokens.shape:
                raise ValueError(
                    f"attention_mask has shape {tuple(mask.shape)}; the tokens "
                    f"have {tuple(tokens.shape)}."
                )
            if bool((mask[:, 1:] < mask[:, :-1]).any()) or bool((mask.sum(-1) == 0).any()):
                raise ValueError(
                    "attention_mask must be left-padded (zeros, then ones) with at "
                    "least one real token per row."
                )
        tokens = tokens.long().cpu()
        mask = mask.long().cpu()
        source = {"sequences": "tokens"}
    else:
        raise TypeError(
            f"sequences must be None (random repeated tokens), a PromptSet or a "
            f"[batch, pos] token tensor, got {type(data).__name__}."
        )
    n = tokens.shape[0]
    empty = torch.zeros(n, 0, dtype=torch.long)
    prompts = PromptSet(
        tokens=tokens,
        attention_mask=mask,
        gold=torch.zeros(n, dtype=torch.long),
        label_token_ids=torch.zeros(0, dtype=torch.long),
        demo_label_positions=empty,
        demo_labels=empty,
        texts=("",) * n,
        label_words=(),
        task_name="tokens",
        k=0,
        seed=int(seed),
        perturbation="gold",
        query_examples=(0,) * n,
    )
    return prompts, source
