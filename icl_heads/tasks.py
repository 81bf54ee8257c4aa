"""ICL classification tasks: examples ``(input, label)``, a label set and a template.

Built-in tasks live in ``icl_heads/data/`` (JSONL + ``catalog.json``); ``load_task`` also
reads a user's CSV or JSONL file with columns ``input,label``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

DEFAULT_TEMPLATE = "Input: {input}\nLabel: {label}\n"


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
            cut just before `` {label}``.
        description: one line on what the task is.
    """

    name: str
    examples: tuple[tuple[str, str], ...]
    labels: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE
    description: str = ""
    metadata: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.examples:
            raise ValueError(f"Task {self.name!r} has no examples; give at least two labels' worth.")
        if len(self.labels) < 2:
            raise ValueError(
                f"Task {self.name!r} has {len(self.labels)} label(s) {list(self.labels)}; an ICL "
                "classification task needs at least two distinct labels."
            )
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"Task {self.name!r} lists a label twice: {list(self.labels)}")
        unknown = sorted({y for _, y in self.examples} - set(self.labels))
        if unknown:
            raise ValueError(f"Task {self.name!r}: labels {unknown} are not in the label set.")
        for i, (x, y) in enumerate(self.examples):
            if not isinstance(x, str) or not isinstance(y, str) or not x.strip() or not y.strip():
                raise ValueError(f"Task {self.name!r}: example {i} ({x!r}, {y!r}) has an empty field.")
            if y != y.strip():
                raise ValueError(
                    f"Task {self.name!r}: label {y!r} has surrounding whitespace; write it bare "
                    "(the template adds the leading space)."
                )
        check_template(self.template)

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    def label_index(self, label: str) -> int:
        return self.labels.index(label)

    def render_demo(self, x: str, y: str) -> str:
        return self.template.format(input=x, label=y)

    def render_query(self, x: str) -> str:
        return self.query_template.format(input=x)

    @property
    def query_template(self) -> str:
        return self.template[: self.template.index(" {label}")]

    @property
    def demo_suffix(self) -> str:
        """The text after the label in a demonstration (e.g. ``"\\n"``)."""
        return self.template[self.template.index(" {label}") + len(" {label}") :]

    def __repr__(self) -> str:
        return (f"Task(name={self.name!r}, n_examples={len(self.examples)}, "
                f"labels={list(self.labels)[:8]}{'...' if len(self.labels) > 8 else ''})")


def check_template(template: str) -> None:
    """Raise ``ValueError`` unless the template has ``{input}`` and `` {label}`` once each."""
    if template.count("{input}") != 1 or template.count("{label}") != 1:
        raise ValueError(
            f"Template {template!r} must contain '{{input}}' and '{{label}}' exactly once, e.g. "
            f"{DEFAULT_TEMPLATE!r}."
        )
    if " {label}" not in template:
        raise ValueError(
            f"Template {template!r}: write ' {{label}}' with one space before it; the space is "
            "part of the label token."
        )
    if template.index("{input}") > template.index("{label}"):
        raise ValueError(f"Template {template!r}: '{{input}}' must come before '{{label}}'.")


def make_task(
    name: str,
    examples: Sequence[tuple[str, str]],
    *,
    template: str = DEFAULT_TEMPLATE,
    labels: Sequence[str] | None = None,
    description: str = "",
) -> Task:
    """Build a ``Task``; the label set defaults to the labels in order of first appearance."""
    examples = tuple((str(x), str(y)) for x, y in examples)
    if labels is None:
        labels = tuple(dict.fromkeys(y for _, y in examples))
    return Task(name=name, examples=examples, labels=tuple(labels), template=template,
                description=description)


def _catalog() -> dict:
    return json.loads(resources.files("icl_heads.data").joinpath("catalog.json").read_text())


def builtin_tasks() -> list[str]:
    """Names of the built-in tasks."""
    return sorted(_catalog())


def load_task(name_or_path: str | Path, *, template: str | None = None) -> Task:
    """Load a built-in task by name, or a CSV/JSONL file with columns ``input,label``.

    Args:
        name_or_path: a built-in name (see :func:`builtin_tasks`) or a file path.
        template: override the template (default: the task's own, or
            ``"Input: {input}\\nLabel: {label}\\n"`` for user files).
    """
    key = str(name_or_path)
    catalog = _catalog()
    if key in catalog:
        entry = catalog[key]
        text = resources.files("icl_heads.data").joinpath(entry["file"]).read_text()
        rows = _parse_jsonl(text, source=entry["file"])
        return make_task(key, rows, template=template or entry["template"],
                         labels=entry.get("labels"), description=entry.get("description", ""))
    path = Path(key).expanduser()
    if not path.exists():
        raise ValueError(
            f"Unknown task {key!r}: not a built-in task ({', '.join(sorted(catalog))}) and no such "
            "file. Pass a built-in name or a .csv/.jsonl file with columns input,label."
        )
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _parse_csv(path)
    elif suffix in (".jsonl", ".json"):
        rows = _parse_jsonl(path.read_text(), source=str(path))
    else:
        raise ValueError(f"Task file {path} must end in .csv or .jsonl (got {suffix!r}).")
    if not rows:
        raise ValueError(f"Task file {path} has no examples.")
    return make_task(path.stem, rows, template=template or DEFAULT_TEMPLATE)


def _parse_jsonl(text: str, *, source: str) -> list[tuple[str, str]]:
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}, line {i}: not valid JSON ({err.msg}).") from None
        if not isinstance(obj, dict) or "input" not in obj or "label" not in obj:
            raise ValueError(f"{source}, line {i}: each line must be an object with keys "
                             "'input' and 'label'.")
        rows.append((str(obj["input"]), str(obj["label"])))
    return rows


def _parse_csv(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"input", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: the CSV needs a header with columns 'input' and 'label' "
                             f"(found {reader.fieldnames}).")
        return [(row["input"], row["label"]) for row in reader]
