"""Build k-shot ICL prompts (:func:`build_prompts`): balanced queries, demonstrations,
perturbations (random or abstract labels, zero-shot, shifted demo labels) and the label
words' token ids.

Demonstrations never include the query example, nor any example whose input is the same
text up to letter case and spacing (:func:`~icl_heads.tasks.input_key`).
The result type, :class:`PromptSet`, and its checks (:func:`check_prompt_set`,
:func:`tokenizer_fingerprint`) live in :mod:`icl_heads.prompt_set` and are importable from
here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from .backends import HookedTransformer
from .checks import check_int, check_seed
from .prompt_set import (
    FINGERPRINT_PROBE,
    PromptSet,
    check_model,
    check_prompt_set,
    tokenizer_fingerprint,
)
from .tasks import Task, input_key

PERTURBATIONS = ("gold", "random_labels", "abstract_labels", "zero_shot")

#: Unrelated single-token words used for ``perturbation="abstract_labels"`` (first that fit).
ABSTRACT_WORDS = (
    "foo",
    "bar",
    "baz",
    "qux",
    "zip",
    "zap",
    "bin",
    "jot",
    "wib",
    "zed",
    "vex",
    "kip",
    "nub",
    "fez",
    "gob",
    "yak",
    "orb",
    "elm",
    "ivy",
    "oak",
)


def shift_demo_labels(prompts: PromptSet, shift: int = 1) -> PromptSet:
    """The same prompts with every demonstration's label replaced by label
    ``(label + shift) % n_labels``, token for token (same lengths and positions).

    Gives an aligned clean/corrupted pair for activation patching: only the demo label
    tokens differ; queries and gold labels are unchanged.

    Raises:
        TypeError: ``prompts`` is not a PromptSet; ``shift`` is not an int.
        ValueError: no demonstrations, fewer than two labels, or a shift that changes nothing.
    """
    check_prompt_set(prompts)
    shift = check_int(shift, "shift", None, "an integer")
    if prompts.n_labels < 2:
        raise ValueError(
            f"shift_demo_labels needs prompts with at least two label words; these "
            f"have {prompts.n_labels} (build them with build_prompts)."
        )
    if prompts.k == 0:
        raise ValueError("shift_demo_labels needs prompts with demonstrations (k >= 1).")
    if shift % prompts.n_labels == 0:
        raise ValueError(
            f"shift={shift} is a multiple of the {prompts.n_labels} labels: nothing would change."
        )
    demo = (prompts.demo_labels + shift) % prompts.n_labels
    tokens = prompts.tokens.clone()
    tokens.scatter_(1, prompts.demo_label_positions, prompts.label_token_ids[demo])
    return replace(
        prompts,
        tokens=tokens,
        demo_labels=demo,
        perturbation=f"{prompts.perturbation}+shifted_labels",
    )


def label_token_ids(model: HookedTransformer, words: Sequence[str]) -> list[int]:
    """Token id of each word with its leading space; ``ValueError`` if any is not one token.

    ``TypeError`` if ``model`` is not a HookedTransformer or ``words`` is not a list of
    strings (a single string is refused: pass ``[word]``); ``ValueError`` for no words, an
    empty word or one with surrounding whitespace (the leading space is added here).
    """
    check_model(model, "label_token_ids")
    if isinstance(words, (str, bytes)) or not hasattr(words, "__iter__"):
        raise TypeError(
            f"words must be a list of label words, e.g. ['positive', 'negative'], "
            f"got {type(words).__name__} {words!r}."
        )
    words = list(words)
    if not words:
        raise ValueError("label_token_ids got no words; pass the label words, e.g. task.labels.")
    for w in words:
        if not isinstance(w, str):
            raise TypeError(
                f"Label word {w!r} is a {type(w).__name__}; label words must be strings."
            )
        if not w.strip() or w != w.strip():
            raise ValueError(
                f"Label word {w!r} is empty or has surrounding whitespace; write it "
                "bare (the leading space is added here)."
            )
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
    ``k`` demonstrations are drawn without replacement from the examples whose input text
    differs from the query's, letter case and spacing ignored (:func:`~icl_heads.tasks.input_key`:
    a case variant of the query is never shown as its demonstration).

    Args:
        model: supplies the tokenizer, BOS convention and context length.
        task: the task (from :func:`~icl_heads.tasks.load_task` or ``make_task``).
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
        A :class:`PromptSet` that records ``model.cfg.model_name`` and the tokenizer's
        :func:`tokenizer_fingerprint`.

    Raises:
        TypeError: ``model`` is not a HookedTransformer; ``task`` is not a :class:`Task` (a
            name must go through ``load_task``); ``k``, ``n`` or ``seed`` is not an int
            (bools and floats are refused); ``perturbation`` is not a str; ``prepend_bos``
            is not a bool.
        ValueError: ``k < 0``, ``n < 1``, more demos than other examples, an unknown
            perturbation, multi-token label words, prompts longer than ``cfg.n_ctx``.
    """
    check_model(model, "build_prompts")
    if isinstance(task, (str, Path)):
        raise TypeError(
            f"task must be a Task, got the {type(task).__name__} {str(task)!r}; "
            f"load it first: build_prompts(model, load_task({str(task)!r}), k, n)."
        )
    if not isinstance(task, Task):
        raise TypeError(
            f"task must be a Task (from load_task or make_task), got {type(task).__name__}."
        )
    k = check_int(k, "k", 0, "a non-negative integer")
    n = check_int(n, "n", 1, "a positive integer")
    seed = check_seed(seed)
    if perturbation is not None and not isinstance(perturbation, str):
        raise TypeError(
            f"perturbation must be None or one of {PERTURBATIONS}, got "
            f"{type(perturbation).__name__} {perturbation!r}."
        )
    perturbation = perturbation or "gold"
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"Unknown perturbation {perturbation!r}; choose one of {PERTURBATIONS}.")
    if prepend_bos is not None and not isinstance(prepend_bos, bool):
        raise TypeError(
            f"prepend_bos must be True, False or None (the model's default), got "
            f"{type(prepend_bos).__name__} {prepend_bos!r}."
        )
    if perturbation == "zero_shot":
        k = 0
    if k > len(task.examples) - 1:
        raise ValueError(
            f"k={k} demos need at least {k + 1} examples; task {task.name!r} has "
            f"{len(task.examples)}."
        )
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
    inputs = [input_key(x) for x, _ in task.examples]
    demo_suffix = task.demo_suffix
    for q in queries:
        # never show the query's input, or a case / spacing variant of it, as a demo (Task
        # refuses repeated inputs and variants with different labels)
        others = [i for i in range(len(task.examples)) if inputs[i] != inputs[q]]
        if len(others) < k:
            raise ValueError(
                f"k={k} demos for query {task.examples[q][0]!r} need {k} examples "
                f"with another input; task {task.name!r} has {len(others)}."
            )
        demos = rng.sample(others, k)
        shown = [task.label_index(task.examples[i][1]) for i in demos]
        if perturbation == "random_labels":
            shown = [rng.randrange(task.n_labels) for _ in demos]
        texts = []
        prefix = ""
        for i in demos:
            texts.append(prefix + task.render_query(task.examples[i][0]))
            prefix = demo_suffix
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
        strings.append(
            "".join(
                t + (" " + label_words[shown[j]] if j < len(shown) else "")
                for j, t in enumerate(texts)
            )
        )

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
        model_name=model.cfg.model_name,
        tokenizer_id=tokenizer_fingerprint(tok),
        task_digest=task.digest,
        task_source=task.source,
    )


def _tokenizer(model: HookedTransformer):
    if model.tokenizer is None:
        raise ValueError(
            "This model has no tokenizer; prompts need one (load it with "
            "icl_heads.load_model, or pass tokenizer=... to HookedTransformer)."
        )
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
        if (
            word.startswith(" ")
            and word[1:].isalpha()
            and word[1:].islower()
            and 3 <= len(word) - 1 <= 6
            and word[1:] not in banned
            and word[1:] not in chosen
            and len(tok.encode(word, add_special_tokens=False)) == 1
        ):
            chosen.append(word[1:])
            if len(chosen) == len(labels):
                return chosen
    raise ValueError(f"Could not find {len(labels)} abstract single-token label words.")


__all__ = [
    "PromptSet",
    "FINGERPRINT_PROBE",
    "PERTURBATIONS",
    "ABSTRACT_WORDS",
    "tokenizer_fingerprint",
    "check_prompt_set",
    "shift_demo_labels",
    "label_token_ids",
    "build_prompts",
]
