"""The :class:`PromptSet` type (k-shot ICL prompts as left-padded token batches) and its
checks: :func:`check_prompt_set` and the :func:`tokenizer_fingerprint` it compares.

The query is always the last token of every row, so "the query position" is ``-1`` for
the whole set. A :class:`PromptSet` records the model and a fingerprint of the tokenizer
it was built with; ``check_prompt_set(prompts, model=model)`` refuses prompts built with
another tokenizer. Building prompts is :func:`icl_heads.prompts.build_prompts`.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from .backends import HookedTransformer, check_backend, is_bridge
from .settings import PromptInfo
from .tasks import Task

#: Text tokenized by :func:`tokenizer_fingerprint`: words, case, digits, punctuation, code,
#: whitespace runs, accents, CJK and an emoji, so different vocabularies split it differently.
FINGERPRINT_PROBE = (
    "The quick brown Fox jumps over 13 lazy dogs; naïve café déjà-vu! 東京 ✓ 😀\n"
    "\tdef f(x): return x**2 + 0.5  # {braces} <tag/> http://a.b/c?d=e&f=g  IIII 1999-12-31"
)


@dataclass(frozen=True)
class PromptSet:
    """A batch of k-shot prompts for one task, left-padded so the query is the last token.

    Attributes:
        tokens: ``[prompt, pos]`` token ids, left-padded to the longest prompt.
        attention_mask: ``[prompt, pos]``, 1 for real tokens, 0 for padding.
        gold: ``[prompt]`` index of the gold label in ``label_words`` / ``label_token_ids``.
        label_token_ids: ``[label]`` token id of each label word (with its leading space).
        demo_label_positions: ``[prompt, k]`` position of each demonstration's label token.
        demo_labels: ``[prompt, k]`` label index shown in each demonstration.
        texts: the rendered prompt strings (without BOS).
        label_words: the label words as they appear in the prompts.
        task_name, k, seed, perturbation: how the set was made.
        query_examples: index into ``task.examples`` of each prompt's query.
        model_name: ``cfg.model_name`` of the model the set was built with (``None`` if
            unknown).
        tokenizer_id: :func:`tokenizer_fingerprint` of that model's tokenizer (``None`` if
            unknown; then :func:`check_prompt_set` cannot compare tokenizers).
        task_digest: :attr:`~icl_heads.tasks.Task.digest` of the task (``None`` if
            unknown).
        task_source: :attr:`~icl_heads.tasks.Task.source` of the task (``None`` if unknown
            or made in code).
    """

    tokens: Int[Tensor, "prompt pos"]
    attention_mask: Int[Tensor, "prompt pos"]
    gold: Int[Tensor, " prompt"]
    label_token_ids: Int[Tensor, " label"]
    demo_label_positions: Int[Tensor, "prompt k"]
    demo_labels: Int[Tensor, "prompt k"]
    texts: tuple[str, ...]
    label_words: tuple[str, ...]
    task_name: str
    k: int
    seed: int
    perturbation: str
    query_examples: tuple[int, ...]
    model_name: str | None = None
    tokenizer_id: str | None = None
    task_digest: str | None = None
    task_source: str | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_labels(self) -> int:
        return len(self.label_words)

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    @property
    def gold_token_ids(self) -> Int[Tensor, " prompt"]:
        return self.label_token_ids[self.gold]

    @property
    def lengths(self) -> Int[Tensor, " prompt"]:
        return self.attention_mask.sum(-1)

    def select(self, index: int | Sequence[int] | Sequence[bool] | slice | Tensor) -> PromptSet:
        """A subset of the prompts, with the padding columns no kept row needs removed.

        Args:
            index: prompt indices (a list, an integer tensor or array, or one int); negative
                indices count from the end as in Python; repeats are kept. Or a slice, or a
                boolean mask (list, tensor or array) with one entry per prompt.

        Raises:
            TypeError: float indices, or bools mixed with ints.
            ValueError: an index out of range, a mask of the wrong length, an empty selection.
        """
        index = _select_index(index, len(self))
        mask = self.attention_mask[index]
        start = int((mask.sum(-1).max() - mask.shape[1]).neg())
        idx = index.tolist()
        return replace(
            self,
            tokens=self.tokens[index, start:],
            attention_mask=mask[:, start:],
            gold=self.gold[index],
            demo_label_positions=self.demo_label_positions[index] - start,
            demo_labels=self.demo_labels[index],
            texts=tuple(self.texts[i] for i in idx),
            query_examples=tuple(self.query_examples[i] for i in idx),
        )

    def to(self, device: str | torch.device) -> PromptSet:
        return replace(
            self,
            tokens=self.tokens.to(device),
            attention_mask=self.attention_mask.to(device),
            gold=self.gold.to(device),
            label_token_ids=self.label_token_ids.to(device),
            demo_label_positions=self.demo_label_positions.to(device),
            demo_labels=self.demo_labels.to(device),
        )

    def info(self) -> PromptInfo:
        """How the set was made, as results record it: task, k, n, seed, perturbation,
        model (``model_name``) and tokenizer (``tokenizer_id``), and what it holds: the
        task's digest and source and :func:`prompts_digest` (computed once per set)."""
        digest = self.__dict__.get("_prompts_digest")
        if digest is None:
            digest = prompts_digest(self)
            object.__setattr__(self, "_prompts_digest", digest)
        return PromptInfo(
            task=self.task_name,
            k=int(self.k),
            n=len(self),
            seed=int(self.seed),
            perturbation=self.perturbation,
            model=self.model_name,
            tokenizer=self.tokenizer_id,
            task_digest=self.task_digest,
            task_source=self.task_source,
            prompts_digest=digest,
        )

    def __repr__(self) -> str:
        return (
            f"PromptSet(task={self.task_name!r}, n={len(self)}, k={self.k}, "
            f"perturbation={self.perturbation!r}, seq_len={self.seq_len}, "
            f"labels={list(self.label_words)[:6]}{'...' if self.n_labels > 6 else ''}, "
            f"model={self.model_name!r})"
        )


def _select_index(index: object, n: int) -> Int[Tensor, " selected"]:
    """``PromptSet.select``'s index as non-negative row numbers, checked against ``n`` rows."""
    if isinstance(index, slice):
        rows = torch.arange(n)[index]
    else:
        if isinstance(index, (bool, np.bool_)):
            raise TypeError(
                f"PromptSet.select: got the single bool {index!r}; pass indices or "
                f"a boolean mask with one entry per prompt ({n})."
            )
        if isinstance(index, numbers.Integral):
            index = [int(index)]
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        if isinstance(index, Tensor):
            rows = index.detach().cpu()
            if rows.dtype.is_floating_point or rows.dtype.is_complex:
                raise TypeError(
                    f"PromptSet.select: indices must be integers or a boolean mask, "
                    f"got a {rows.dtype} tensor {rows.flatten()[:4].tolist()}."
                )
            if rows.ndim > 1:
                raise ValueError(
                    f"PromptSet.select: indices must be 1-D, got shape {tuple(rows.shape)}."
                )
            rows = rows.reshape(-1)
        elif isinstance(index, (str, bytes)) or not hasattr(index, "__iter__"):
            raise TypeError(
                f"PromptSet.select: index must be an int, a sequence of ints, a "
                f"slice, a boolean mask or a tensor, got {type(index).__name__} "
                f"{index!r}."
            )
        else:
            items = list(index)
            bools = [isinstance(i, (bool, np.bool_)) for i in items]
            if items and all(bools):
                rows = torch.tensor([bool(i) for i in items], dtype=torch.bool)
            else:
                bad = next(
                    (i for i, b in zip(items, bools) if b or not isinstance(i, numbers.Integral)),
                    None,
                )
                if bad is not None:
                    raise TypeError(
                        f"PromptSet.select: index {bad!r} ({type(bad).__name__}) is not an int; "
                        "pass integer indices or a boolean mask with one entry per prompt."
                    )
                rows = torch.tensor([int(i) for i in items], dtype=torch.long)
        if rows.dtype == torch.bool:
            if rows.numel() != n:
                raise ValueError(
                    f"PromptSet.select: the boolean mask has {rows.numel()} "
                    f"entries but the set has {n} prompts."
                )
            rows = rows.nonzero().flatten()
        rows = rows.long()
        out = (rows < -n) | (rows >= n)
        if bool(out.any()):
            raise ValueError(
                f"PromptSet.select: index {int(rows[out][0])} is out of range for "
                f"a set of {n} prompts (valid: {-n} to {n - 1})."
            )
        rows = torch.where(rows < 0, rows + n, rows)
    if rows.numel() == 0:
        raise ValueError("PromptSet.select: the selection is empty.")
    return rows


def prompts_digest(prompts: PromptSet) -> str:
    """A hash of what a prompt set holds: every prompt's real tokens (padding excluded, so
    the same prompts padded to another length hash the same), its gold label index and the
    label token ids. sha256, first 16 hex digits. Equal digests mean the same prompts, in
    the same order, scored against the same labels.

    Example::

        prompts_digest(prompts) == prompts.info().prompts_digest      # True
    """
    tokens = prompts.tokens.detach().cpu().long().numpy()
    mask = prompts.attention_mask.detach().cpu().bool().numpy()
    gold = prompts.gold.detach().cpu().long().numpy()
    labels = prompts.label_token_ids.detach().cpu().long().numpy()
    h = hashlib.sha256()
    h.update(np.asarray([len(labels)], dtype="<i8").tobytes())
    h.update(labels.astype("<i8").tobytes())
    for row, keep, y in zip(tokens, mask, gold):
        real = row[keep].astype("<i8")
        h.update(np.asarray([real.size, y], dtype="<i8").tobytes())
        h.update(real.tobytes())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """A short id of a tokenizer: equal ids mean the same tokenization, in practice.

    A hash (sha256, first 16 hex digits) of ``len(tokenizer)``, its BOS and EOS token ids
    and the token ids of :data:`FINGERPRINT_PROBE` (no special tokens). Cheap (one short
    encode, not the whole vocabulary). Padding side and pad token are not part of it.

    Raises:
        TypeError: ``tokenizer`` is not a Hugging Face tokenizer (e.g. a model was passed).
    """
    if not callable(getattr(tokenizer, "encode", None)) or not hasattr(tokenizer, "__len__"):
        model = isinstance(tokenizer, HookedTransformer) or is_bridge(tokenizer)
        hint = " (pass model.tokenizer)" if model else ""
        raise TypeError(
            f"tokenizer_fingerprint needs a Hugging Face tokenizer{hint}, got "
            f"{type(tokenizer).__name__}."
        )
    ids = tokenizer.encode(FINGERPRINT_PROBE, add_special_tokens=False)
    raw = json.dumps(
        [
            len(tokenizer),
            getattr(tokenizer, "bos_token_id", None),
            getattr(tokenizer, "eos_token_id", None),
            [int(i) for i in ids],
        ]
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def check_prompt_set(
    prompts: PromptSet, what: str = "prompts", *, model: HookedTransformer | None = None
) -> None:
    """Raise a clear error unless ``prompts`` is a non-empty :class:`PromptSet` (usable with
    ``model``, when given).

    With ``model``: ``ValueError`` if the set was built with a different tokenizer (its
    ``tokenizer_id`` differs from the model's :func:`tokenizer_fingerprint`; skipped when
    either is unknown), if a token id is outside ``[0, cfg.d_vocab)`` or if the prompts are
    longer than ``cfg.n_ctx``. Models that share a tokenizer accept each other's prompts.
    Cost: one short encode and a min/max over the tokens.
    """
    if not isinstance(prompts, PromptSet):
        raise TypeError(
            f"{what} must be a PromptSet (from icl_heads.build_prompts), got "
            f"{type(prompts).__name__}."
        )
    if len(prompts) == 0:
        raise ValueError(f"The {what} PromptSet is empty; build it with n >= 1.")
    if model is None:
        return
    check_model(model, "check_prompt_set")
    name = model.cfg.model_name
    if prompts.tokenizer_id is not None and model.tokenizer is not None:
        fingerprint = tokenizer_fingerprint(model.tokenizer)
        if fingerprint != prompts.tokenizer_id:
            built = f"model {prompts.model_name!r}" if prompts.model_name else "another model"
            raise ValueError(
                f"The {what} were built for {built}'s tokenizer (fingerprint "
                f"{prompts.tokenizer_id}), but model {name!r} has a different "
                f"tokenizer ({fingerprint}); rebuild them with build_prompts(model, task, ...)."
            )
    d_vocab, n_ctx = model.cfg.d_vocab, model.cfg.n_ctx
    if prompts.seq_len > n_ctx:
        raise ValueError(
            f"The {what} are {prompts.seq_len} tokens long, more than model "
            f"{name!r}'s context n_ctx={n_ctx}; rebuild them with "
            "build_prompts(model, task, ...) and fewer demonstrations."
        )
    ids = [prompts.tokens]
    if prompts.label_token_ids.numel():
        ids.append(prompts.label_token_ids)
    lo = min(int(t.min()) for t in ids)
    hi = max(int(t.max()) for t in ids)
    if lo < 0 or hi >= d_vocab:
        raise ValueError(
            f"The {what} hold token id {hi if hi >= d_vocab else lo}, outside model "
            f"{name!r}'s vocabulary [0, d_vocab={d_vocab}); rebuild them with "
            "build_prompts(model, task, ...)."
        )


def check_model(model: object, fn: str) -> None:
    """Raise a ``TypeError`` naming ``fn`` unless ``model`` is a ``HookedTransformer`` or a
    compatibility-mode ``TransformerBridge`` (:func:`~icl_heads.backends.check_backend`; with
    a hint when a :class:`~icl_heads.tasks.Task` came first by mistake).

    Example::

        check_model(model, "build_prompts")
    """
    if isinstance(model, Task):
        raise TypeError(
            f"{fn} needs a HookedTransformer as model (e.g. icl_heads.load_model()), "
            f"got {type(model).__name__} (the arguments are (model, task, ...))."
        )
    check_backend(model, fn)


__all__ = [
    "PromptSet",
    "FINGERPRINT_PROBE",
    "tokenizer_fingerprint",
    "prompts_digest",
    "check_prompt_set",
    "check_model",
]
