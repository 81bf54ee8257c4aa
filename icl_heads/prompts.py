"""k-shot ICL prompts as left-padded token batches (:class:`PromptSet`).

The query is always the last token of every row, so "the query position" is ``-1`` for
the whole set. Demonstrations never include the query example.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from .tasks import Task

PERTURBATIONS = ("gold", "random_labels", "abstract_labels", "zero_shot")

#: Unrelated single-token words used for ``perturbation="abstract_labels"`` (first that fit).
ABSTRACT_WORDS = (
    "foo", "bar", "baz", "qux", "zip", "zap", "bin", "jot", "wib", "zed", "vex", "kip",
    "nub", "fez", "gob", "yak", "orb", "elm", "ivy", "oak",
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

    def select(self, index: Sequence[int] | slice | Tensor) -> PromptSet:
        """A subset of the prompts, with the padding columns no kept row needs removed."""
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        index = torch.as_tensor(index, dtype=torch.long)
        if index.numel() == 0:
            raise ValueError("PromptSet.select: the selection is empty.")
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

    def describe(self) -> dict:
        """How the set was made (goes into result metadata)."""
        return {"task": self.task_name, "k": self.k, "n": len(self), "seed": self.seed,
                "perturbation": self.perturbation}

    def __repr__(self) -> str:
        return (f"PromptSet(task={self.task_name!r}, n={len(self)}, k={self.k}, "
                f"perturbation={self.perturbation!r}, seq_len={self.seq_len}, "
                f"labels={list(self.label_words)[:6]}{'...' if self.n_labels > 6 else ''})")


def check_prompt_set(prompts: PromptSet, what: str = "prompts") -> None:
    """Raise a clear error unless ``prompts`` is a non-empty :class:`PromptSet`."""
    if not isinstance(prompts, PromptSet):
        raise TypeError(f"{what} must be a PromptSet (from icl_heads.build_prompts), got "
                        f"{type(prompts).__name__}.")
    if len(prompts) == 0:
        raise ValueError(f"The {what} PromptSet is empty; build it with n >= 1.")


def shift_demo_labels(prompts: PromptSet, shift: int = 1) -> PromptSet:
    """The same prompts with every demonstration's label replaced by label
    ``(label + shift) % n_labels``, token for token (same lengths and positions).

    Gives an aligned clean/corrupted pair for activation patching: only the demo label
    tokens differ; queries and gold labels are unchanged.
    """
    if prompts.k == 0:
        raise ValueError("shift_demo_labels needs prompts with demonstrations (k >= 1).")
    if shift % prompts.n_labels == 0:
        raise ValueError(f"shift={shift} is a multiple of the {prompts.n_labels} labels: "
                         "nothing would change.")
    demo = (prompts.demo_labels + shift) % prompts.n_labels
    tokens = prompts.tokens.clone()
    tokens.scatter_(1, prompts.demo_label_positions, prompts.label_token_ids[demo])
    return replace(prompts, tokens=tokens, demo_labels=demo,
                   perturbation=f"{prompts.perturbation}+shifted_labels")


def label_token_ids(model: HookedTransformer, words: Sequence[str]) -> list[int]:
    """Token id of each word with its leading space; ``ValueError`` if any is not one token."""
    tok = _tokenizer(model)
    ids, bad = [], []
    for w in words:
        enc = tok.encode(" " + w, add_special_tokens=False)
        if len(enc) != 1:
            bad.append(f"{w!r} -> {[tok.decode([t]) for t in enc]}")
        else:
            ids.append(enc[0])
    if bad:
        raise ValueError(
            "Each label word must be a single token (with its leading space) for this model's "
            f"tokenizer; these are not: {'; '.join(bad)}. Choose single-token label words, e.g. "
            "'positive'/'negative'."
        )
    if len(set(ids)) != len(ids):
        raise ValueError(f"Label words {list(words)} map to repeated tokens {ids}.")
    return ids


def build_prompts(
    model: HookedTransformer,
    task: Task,
    k: int,
    n: int,
    seed: int = 0,
    perturbation: str | None = None,
    *,
    prepend_bos: bool | None = None,
) -> PromptSet:
    """Build ``n`` k-shot prompts for ``task``.

    Queries cycle through the labels (balanced) in a seeded random order; each prompt's
    ``k`` demonstrations are drawn without replacement from the other examples.

    Args:
        model: supplies the tokenizer, BOS convention and context length.
        task: the task.
        k: demonstrations per prompt (0 for zero-shot).
        n: number of prompts (queries may repeat, with other demos, if ``n`` exceeds the
            number of examples).
        seed: seeds the choice of queries, demos and perturbations.
        perturbation: ``None``/``"gold"``; ``"random_labels"`` (each demo label drawn
            uniformly from the label set: keeps the label space, removes the mapping);
            ``"abstract_labels"`` (label words replaced by unrelated single tokens, e.g.
            " foo", consistently in demos and label ids); ``"zero_shot"`` (no demos).
        prepend_bos: default: the model's ``cfg.default_prepend_bos``.

    Returns:
        A :class:`PromptSet`.
    """
    perturbation = perturbation or "gold"
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"Unknown perturbation {perturbation!r}; choose one of {PERTURBATIONS}.")
    if perturbation == "zero_shot":
        k = 0
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}.")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    if k > len(task.examples) - 1:
        raise ValueError(f"k={k} demos need at least {k + 1} examples; task {task.name!r} has "
                         f"{len(task.examples)}.")
    tok = _tokenizer(model)
    label_words = list(task.labels)
    if perturbation == "abstract_labels":
        label_words = _abstract_words(model, task.labels)
    label_ids = label_token_ids(model, label_words)
    rng = random.Random(seed)
    queries = _balanced_queries(task, n, rng)

    if prepend_bos is None:
        prepend_bos = bool(model.cfg.default_prepend_bos)
    bos = [tok.bos_token_id] if prepend_bos and tok.bos_token_id is not None else []
    pieces: list[list[str]] = []  # text pieces between label tokens
    rows = []
    for q in queries:
        others = [i for i in range(len(task.examples)) if i != q]
        demos = rng.sample(others, k)
        shown = [task.label_index(task.examples[i][1]) for i in demos]
        if perturbation == "random_labels":
            shown = [rng.randrange(task.n_labels) for _ in demos]
        texts = []
        prefix = ""
        for i in demos:
            x = task.examples[i][0]
            texts.append(prefix + task.template.split(" {label}")[0].format(input=x))
            prefix = task.demo_suffix
        texts.append(prefix + task.render_query(task.examples[q][0]))
        pieces.append(texts)
        rows.append((q, shown))

    flat = [t for texts in pieces for t in texts]
    encoded = tok(flat, add_special_tokens=False)["input_ids"] if flat else []
    sequences, positions, strings = [], [], []
    cursor = 0
    for texts, (_q, shown) in zip(pieces, rows):
        ids = list(bos)
        pos = []
        for j, _ in enumerate(texts):
            ids.extend(encoded[cursor + j])
            if j < len(shown):
                ids.append(label_ids[shown[j]])
                pos.append(len(ids) - 1)
        cursor += len(texts)
        sequences.append(ids)
        positions.append(pos)
        strings.append("".join(
            t + (" " + label_words[shown[j]] if j < len(shown) else "") for j, t in enumerate(texts)
        ))

    lengths = [len(s) for s in sequences]
    n_ctx = model.cfg.n_ctx
    too_long = [i for i, length in enumerate(lengths) if length > n_ctx]
    if too_long:
        raise ValueError(
            f"{len(too_long)} prompt(s) are longer than the model's context ({max(lengths)} > "
            f"n_ctx={n_ctx} tokens, e.g. prompt {too_long[0]}). Use fewer demonstrations "
            f"(k={k}) or shorter inputs."
        )
    T = max(lengths)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    tokens = torch.full((n, T), pad, dtype=torch.long)
    mask = torch.zeros((n, T), dtype=torch.long)
    demo_pos = torch.zeros((n, k), dtype=torch.long)
    for i, (ids, pos) in enumerate(zip(sequences, positions)):
        offset = T - len(ids)
        tokens[i, offset:] = torch.tensor(ids)
        mask[i, offset:] = 1
        if k:
            demo_pos[i] = torch.tensor(pos) + offset
    return PromptSet(
        tokens=tokens,
        attention_mask=mask,
        gold=torch.tensor([task.label_index(task.examples[q][1]) for q in queries]),
        label_token_ids=torch.tensor(label_ids),
        demo_label_positions=demo_pos,
        demo_labels=torch.tensor([shown for _, shown in rows], dtype=torch.long).reshape(n, k),
        texts=tuple(strings),
        label_words=tuple(label_words),
        task_name=task.name,
        k=k,
        seed=seed,
        perturbation=perturbation,
        query_examples=tuple(queries),
    )


def _tokenizer(model: HookedTransformer):
    if model.tokenizer is None:
        raise ValueError("This model has no tokenizer; prompts need one (load it with "
                         "icl_heads.load_model, or pass tokenizer=... to HookedTransformer).")
    return model.tokenizer


def _balanced_queries(task: Task, n: int, rng: random.Random) -> list[int]:
    """Round-robin over labels, each label's examples shuffled; repeats only past the pool."""
    by_label: dict[int, list[int]] = {}
    for i, (_, y) in enumerate(task.examples):
        by_label.setdefault(task.label_index(y), []).append(i)
    pools = [rng.sample(v, len(v)) for _, v in sorted(by_label.items())]
    order = rng.sample(range(len(pools)), len(pools))
    out, cursors = [], [0] * len(pools)
    while len(out) < n:
        for p in order:
            if len(out) == n:
                break
            pool = pools[p]
            out.append(pool[cursors[p] % len(pool)])
            cursors[p] += 1
    rng.shuffle(out)
    return out


def _abstract_words(model: HookedTransformer, labels: Sequence[str]) -> list[str]:
    """Unrelated single-token words, one per label, none equal to an original label."""
    tok = _tokenizer(model)
    banned = {w.lower() for w in labels}
    chosen = []
    for w in ABSTRACT_WORDS:
        if w not in banned and len(tok.encode(" " + w, add_special_tokens=False)) == 1:
            chosen.append(w)
        if len(chosen) == len(labels):
            return chosen
    # Large label sets (e.g. capitals): fill with short lowercase vocabulary words, in a
    # fixed (vocabulary) order so the choice is deterministic.
    for token, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
        word = tok.convert_tokens_to_string([token])
        if (word.startswith(" ") and word[1:].isalpha() and word[1:].islower()
                and 3 <= len(word) - 1 <= 6 and word[1:] not in banned and word[1:] not in chosen
                and len(tok.encode(word, add_special_tokens=False)) == 1):
            chosen.append(word[1:])
            if len(chosen) == len(labels):
                return chosen
    raise ValueError(f"Could not find {len(labels)} abstract single-token label words.")
