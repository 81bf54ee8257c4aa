"""ICL classification tasks: examples ``(input, label)``, a label set and a template.

Built-in tasks live in ``icl_heads/data/`` (JSONL + ``catalog.json``); ``load_task`` also
reads a user's CSV or JSONL file with columns ``input,label``.

What a task accepts (checked when it is made, so a bad task never reaches ``build_prompts``):

- every example has a non-empty ``input`` and ``label``; numbers (``int``/``float``, not
  ``bool``) are accepted as their ``str``, anything else (``None``, lists...) is an error;
- each input text is listed once (compared without surrounding whitespace); a repeated
  input is an error naming both places, so a query can never be shown as its own demo;
- two inputs that differ only in letter case or spacing (``"Great film"`` and
  ``"great  film"``) may not have different labels (an error naming both places);
  with the same label they are allowed, and ``build_prompts`` never shows one as a
  demonstration of the other (:func:`input_key`);
- labels are written bare (no surrounding whitespace) and no two labels differ only in case;
- the template holds ``{input}`` and `` {label}`` once each and no other field; a literal
  brace is written ``{{`` or ``}}`` (as in ``str.format``).

Files are read as UTF-8 (a leading byte-order mark is ignored). Blank lines (and CSV rows
whose cells are all empty) are skipped; extra CSV columns and extra JSON keys are ignored.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

from .task_files import as_text, parse_csv, parse_jsonl, read_utf8

DEFAULT_TEMPLATE = "Input: {input}\nLabel: {label}\n"

_TASK_SUFFIXES = (".csv", ".jsonl", ".json")


@dataclass(frozen=True)
class Task:
    """A classification-style ICL task.

    Attributes:
        name: short name, e.g. ``"sentiment"``.
        examples: ``(input, label)`` pairs; labels are words without the leading space.
        labels: the label set, in a fixed order (the index of a label is its class id).
        template: one demonstration, with ``{input}`` and `` {label}`` (the label is
            preceded by one space, which becomes the label token's leading space). The
            text after `` {label}`` separates demonstrations; the query is the template
            cut just before `` {label}``. Literal braces are written ``{{`` and ``}}``.
        description: one line on what the task is.
        source: where the task came from: ``"builtin:<file>"`` for a built-in task, the
            resolved path of a task file, ``None`` for a task made in code (recorded in
            every result's :class:`~icl_heads.settings.PromptInfo`).
    """

    name: str
    examples: tuple[tuple[str, str], ...]
    labels: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE
    description: str = ""
    metadata: dict = field(default_factory=dict, compare=False)
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TypeError(f"Task name must be a non-empty str, got {self.name!r}.")
        where = f"Task {self.name!r}"
        if isinstance(self.examples, (str, bytes)) or not isinstance(self.examples, Sequence):
            raise TypeError(
                f"{where}: examples must be a sequence of (input, label) pairs, got "
                f"{type(self.examples).__name__}."
            )
        if isinstance(self.labels, (str, bytes)) or not isinstance(self.labels, Sequence):
            raise TypeError(
                f"{where}: labels must be a sequence of label words, got "
                f"{self.labels!r}; e.g. labels=('positive', 'negative')."
            )
        bad = [y for y in self.labels if not isinstance(y, str)]
        if bad:
            raise TypeError(
                f"{where}: labels must be strings; got {bad[0]!r} ({type(bad[0]).__name__})."
            )
        for i, pair in enumerate(self.examples):
            _check_pair(pair, f"{where}: example {i}")
            if not isinstance(pair[0], str) or not isinstance(pair[1], str):
                raise TypeError(
                    f"{where}: example {i} {tuple(pair)!r} must hold two strings; "
                    "use make_task, which converts numbers with str()."
                )
        object.__setattr__(self, "examples", tuple((x, y) for x, y in self.examples))
        object.__setattr__(self, "labels", tuple(self.labels))
        if not isinstance(self.description, str):
            raise TypeError(
                f"{where}: description must be a str, got {type(self.description).__name__}."
            )
        check_template(self.template)
        if not self.examples:
            raise ValueError(f"{where} has no examples; give at least two labels' worth.")
        _check_examples(self.examples, where=where)
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"{where} lists a label twice: {list(self.labels)}")
        for y in self.labels:
            if not y.strip() or y != y.strip():
                raise ValueError(
                    f"{where}: label {y!r} is empty or has surrounding whitespace; "
                    "write it bare (the template adds the leading space)."
                )
        clash = _case_clash(self.labels)
        if clash:
            raise ValueError(
                f"{where}: labels {clash} differ only in case; the model would "
                "see them as different answers. Use one spelling."
            )
        if len(self.labels) < 2:
            raise ValueError(
                f"{where} has {len(self.labels)} label(s) {list(self.labels)}; an ICL "
                "classification task needs at least two distinct labels."
            )
        unknown = sorted({y for _, y in self.examples} - set(self.labels))
        if unknown:
            raise ValueError(
                f"{where}: labels {unknown} are not in the label set {list(self.labels)}."
            )

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    @cached_property
    def digest(self) -> str:
        """A hash of what the task holds (its examples in order, its labels and its
        template; not its name, description or source): equal digests mean the same
        prompts for the same model, seed, k and n. sha256, first 16 hex digits.

        Example::

            load_task("sentiment").digest        # e.g. '5b1f0e2c9a7d4e31'
        """
        raw = json.dumps(
            {
                "examples": [list(pair) for pair in self.examples],
                "labels": list(self.labels),
                "template": self.template,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]

    def label_index(self, label: str) -> int:
        """The class id of ``label`` (its index in ``labels``)."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(
                f"{label!r} is not a label of task {self.name!r}; labels are {list(self.labels)}."
            ) from None

    def render_demo(self, x: str, y: str) -> str:
        """One demonstration: the template filled with ``x`` and ``y`` (``{{``/``}}`` -> braces).

        Equals ``render_query(x) + " " + y + demo_suffix``.
        """
        return self.template.format(input=x, label=y)

    def render_query(self, x: str) -> str:
        """The query prompt for ``x``: the demonstration cut just before `` {label}``."""
        return self.query_template.format(input=x)

    @property
    def query_template(self) -> str:
        """The template up to (not including) `` {label}``, still a format string."""
        start, _ = _label_span(self.template)
        return self.template[: start - 1]

    @property
    def demo_suffix(self) -> str:
        """The text after the label in a demonstration (e.g. ``"\\n"``), braces unescaped."""
        _, end = _label_span(self.template)
        return self.template[end:].format()

    def __repr__(self) -> str:
        return (
            f"Task(name={self.name!r}, n_examples={len(self.examples)}, "
            f"labels={list(self.labels)[:8]}{'...' if len(self.labels) > 8 else ''})"
        )


def _template_fields(template: str) -> list[tuple[str, int, int]]:
    """The ``{...}`` fields of a format string as ``(name, start, end)``; ``{{``/``}}`` are
    literal braces. ``ValueError`` for a lone brace."""
    fields, i = [], 0
    while i < len(template):
        c = template[i]
        if c in "{}" and template[i : i + 2] in ("{{", "}}"):
            i += 2
        elif c == "{":
            end = template.find("}", i + 1)
            if end < 0 or "{" in template[i + 1 : end]:
                raise ValueError(
                    f"Template {template!r} has an unmatched '{{' at position {i}; write '{{{{' "
                    "for a literal brace."
                )
            fields.append((template[i + 1 : end], i, end + 1))
            i = end + 1
        elif c == "}":
            raise ValueError(
                f"Template {template!r} has an unmatched '}}' at position {i}; write '}}}}' for a "
                "literal brace."
            )
        else:
            i += 1
    return fields


def _label_span(template: str) -> tuple[int, int]:
    ((start, end),) = [(s, e) for name, s, e in _template_fields(template) if name == "label"]
    return start, end


def check_template(template: str) -> None:
    """Raise ``ValueError`` unless the template has ``{input}`` and `` {label}`` once each.

    No other field is allowed (no ``{text}``, no positional ``{}``, no ``{input!r}`` or
    ``{label:>5}``); a literal brace is written ``{{`` or ``}}``. ``TypeError`` if the
    template is not a str.
    """
    if not isinstance(template, str):
        raise TypeError(
            f"template must be a str such as {DEFAULT_TEMPLATE!r}, got {type(template).__name__}."
        )
    fields = _template_fields(template)
    for name, _, _ in fields:
        if name in ("input", "label"):
            continue
        if name == "" or name.isdigit():
            what = f"a positional field '{{{name}}}'"
        elif name.split("!")[0].split(":")[0] in ("input", "label"):
            what = f"the field '{{{name}}}' (conversions and format specs are not supported)"
        else:
            what = f"an unknown field '{{{name}}}'"
        raise ValueError(
            f"Template {template!r} has {what}; the only fields are '{{input}}' and '{{label}}'. "
            "Write '{{' and '}}' for literal braces."
        )
    names = [name for name, _, _ in fields]
    if names.count("input") != 1 or names.count("label") != 1:
        raise ValueError(
            f"Template {template!r} must contain '{{input}}' and '{{label}}' exactly once, e.g. "
            f"{DEFAULT_TEMPLATE!r}."
        )
    start, _ = _label_span(template)
    if template[start - 1 : start] != " ":
        raise ValueError(
            f"Template {template!r}: write ' {{label}}' with one space before it; the space is "
            "part of the label token."
        )
    if names.index("input") > names.index("label"):
        raise ValueError(f"Template {template!r}: '{{input}}' must come before '{{label}}'.")


def make_task(
    name: str,
    examples: Sequence[tuple[str, str]],
    *,
    template: str = DEFAULT_TEMPLATE,
    labels: Sequence[str] | None = None,
    description: str = "",
    source: str | None = None,
) -> Task:
    """Build a ``Task``; the label set defaults to the labels in order of first appearance.

    Inputs and labels must be strings; numbers (``int``/``float``, not ``bool``) are
    converted with ``str``. ``TypeError`` for anything else (``None``, lists, a dict of
    examples); ``ValueError`` for empty fields, repeated inputs, inputs that differ only in
    case or spacing but have different labels, labels that differ only in case and bad
    templates (see :class:`Task` and :func:`check_template`). ``source``: where the
    examples came from (recorded in results; :func:`load_task` fills it).
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"Task name must be a non-empty str, got {name!r}.")
    if isinstance(examples, dict):
        raise TypeError(
            f"Task {name!r}: examples must be a list of (input, label) pairs, got a "
            "dict; pass list(examples.items())."
        )
    if isinstance(examples, (str, bytes)) or not hasattr(examples, "__iter__"):
        raise TypeError(
            f"Task {name!r}: examples must be a list of (input, label) pairs, got "
            f"{type(examples).__name__}."
        )
    pairs = []
    for i, pair in enumerate(examples):
        where = f"Task {name!r}: example {i}"
        _check_pair(pair, where)
        pairs.append((as_text(pair[0], f"{where} input"), as_text(pair[1], f"{where} label")))
    if labels is not None:
        if isinstance(labels, (str, bytes)):
            raise TypeError(
                f"Task {name!r}: labels must be a sequence of label words, got the "
                f"string {labels!r}; e.g. labels=('positive', 'negative')."
            )
        labels = tuple(labels)
    else:
        labels = tuple(dict.fromkeys(y for _, y in pairs))
    if source is not None and not isinstance(source, str):
        raise TypeError(f"Task {name!r}: source must be a str or None, got {source!r}.")
    return Task(
        name=name,
        examples=tuple(pairs),
        labels=labels,
        template=template,
        description=description,
        source=source,
    )


def _check_pair(pair: object, where: str) -> None:
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise TypeError(f"{where} is {pair!r}; each example must be an (input, label) pair.")


def input_key(text: str) -> str:
    """An input as tasks and prompts compare inputs: letter case folded and whitespace runs
    collapsed (``"Great  Film "`` and ``"great film"`` have the same key). Two examples with
    the same key may not have different labels, and neither is shown as a demonstration of
    the other.

    Example::

        input_key("  Great\tFILM ")          # 'great film'
    """
    return " ".join(text.split()).casefold()


def _case_clash(labels: Sequence[str]) -> list[str]:
    """The first group of distinct labels that differ only in case (empty if none)."""
    groups: dict[str, list[str]] = {}
    for y in labels:
        group = groups.setdefault(y.casefold(), [])
        if y not in group:
            group.append(y)
    return next((g for g in groups.values() if len(g) > 1), [])


def _check_examples(
    examples: Sequence[tuple[str, str]], *, where: str, lines: Sequence[int] | None = None
) -> None:
    """Empty fields, padded labels, repeated inputs and labels differing only in case.

    ``where`` names the task or file; ``lines`` (file line numbers, one per example) makes
    the messages say "line N" instead of "example i".
    """

    def loc(i: int) -> str:
        return f"line {lines[i]}" if lines is not None else f"example {i}"

    first_input: dict[str, int] = {}
    first_variant: dict[str, int] = {}
    first_label: dict[str, int] = {}
    for i, (x, y) in enumerate(examples):
        if not x.strip():
            raise ValueError(
                f"{where}, {loc(i)}: the input is empty ({x!r}); every example "
                "needs an input and a label."
            )
        if not y.strip():
            raise ValueError(
                f"{where}, {loc(i)}: the label is empty ({y!r}) for input {x!r}; "
                "every example needs an input and a label."
            )
        if y != y.strip():
            raise ValueError(
                f"{where}, {loc(i)}: label {y!r} has surrounding whitespace; write it bare "
                "(the template adds the leading space)."
            )
        key = x.strip()
        if key in first_input:
            j = first_input[key]
            y0 = examples[j][1]
            labels = f"label {y!r} both times" if y0 == y else f"labels {y0!r} and {y!r}"
            raise ValueError(
                f"{where}: input {x!r} is listed twice ({loc(j)} and {loc(i)}, {labels}); list "
                "each input once (a query must never be its own demonstration)."
            )
        first_input[key] = i
        variant = input_key(x)
        j = first_variant.setdefault(variant, i)
        if examples[j][1] != y:
            raise ValueError(
                f"{where}: inputs {examples[j][0]!r} ({loc(j)}, label {examples[j][1]!r}) and "
                f"{x!r} ({loc(i)}, label {y!r}) differ only in letter case or spacing but have "
                "different labels; the model sees them as the same question. Keep one of them "
                "(or give both the same label)."
            )
        first_label.setdefault(y, i)
    clash = _case_clash(list(first_label))
    if clash:
        places = ", ".join(f"{y!r} ({loc(first_label[y])})" for y in clash)
        raise ValueError(
            f"{where}: labels {places} differ only in case; the model would see "
            "them as different answers. Use one spelling."
        )


def _catalog() -> dict:
    text = resources.files("icl_heads.data").joinpath("catalog.json").read_text(encoding="utf-8")
    return json.loads(text)


def builtin_tasks() -> list[str]:
    """Names of the built-in tasks."""
    return sorted(_catalog())


def load_task(name_or_path: str | Path, *, template: str | None = None) -> Task:
    """Load a built-in task by name, or a CSV/JSONL file with columns ``input,label``.

    Args:
        name_or_path: a built-in name (see :func:`builtin_tasks`) or a file path (``.csv``
            with a header row holding ``input`` and ``label``, or ``.jsonl`` with one
            ``{"input": ..., "label": ...}`` object per line). Files must be UTF-8.
        template: override the template (default: the task's own, or
            ``"Input: {input}\\nLabel: {label}\\n"`` for user files).

    Raises:
        TypeError: ``name_or_path`` is not a str or path; ``template`` is not a str.
        FileNotFoundError: a path (it has a ``/`` or a task-file suffix) that does not exist.
        ValueError: an unknown name; a file that is not UTF-8, is empty, or has a bad row
            (the message names the file and the line); a bad template.
    """
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(
            f"load_task takes a built-in task name or a file path, got "
            f"{type(name_or_path).__name__} {name_or_path!r}."
        )
    if template is not None:
        check_template(template)
    key = str(name_or_path)
    catalog = _catalog()
    if isinstance(name_or_path, str) and key in catalog:
        entry = catalog[key]
        text = resources.files("icl_heads.data").joinpath(entry["file"]).read_text(encoding="utf-8")
        rows, lines = parse_jsonl(text, source=entry["file"])
        _check_examples(rows, where=entry["file"], lines=lines)
        return make_task(
            key,
            rows,
            template=template if template is not None else entry["template"],
            labels=entry.get("labels"),
            description=entry.get("description", ""),
            source=f"builtin:{entry['file']}",
        )
    builtins = ", ".join(sorted(catalog))
    path = Path(key).expanduser()
    looks_like_path = (
        isinstance(name_or_path, Path)
        or path.suffix.lower() in _TASK_SUFFIXES
        or "/" in key
        or "\\" in key
    )
    if not path.exists():
        if looks_like_path:
            raise FileNotFoundError(
                f"Task file {str(path)!r} does not exist. Pass an existing .csv/.jsonl file "
                f"with columns input,label, or a built-in task name ({builtins})."
            )
        close = difflib.get_close_matches(key, list(catalog), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown task {key!r}: not a built-in task ({builtins}) and no such file.{hint} "
            "Pass a built-in name or a .csv/.jsonl file with columns input,label."
        )
    if not path.is_file():
        raise ValueError(f"Task path {str(path)!r} is not a file; pass a .csv or .jsonl file.")
    suffix = path.suffix.lower()
    if suffix not in _TASK_SUFFIXES:
        raise ValueError(f"Task file {path} must end in .csv or .jsonl (got {suffix!r}).")
    text = read_utf8(path)
    if not text.strip():
        raise ValueError(f"Task file {path} is empty; it needs examples with an input and a label.")
    if suffix == ".csv":
        rows, lines = parse_csv(text, source=str(path))
    else:
        rows, lines = parse_jsonl(text, source=str(path))
    if not rows:
        raise ValueError(f"Task file {path} has no examples (only a header or blank lines).")
    _check_examples(rows, where=str(path), lines=lines)
    try:
        return make_task(
            path.stem,
            rows,
            template=template if template is not None else DEFAULT_TEMPLATE,
            source=str(path.resolve()),
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
