"""Reading task files: UTF-8 text (:func:`read_utf8`) and its rows as ``(input, label)``
pairs with their line numbers (:func:`parse_jsonl`, :func:`parse_csv`), with errors naming
the file and the line. :func:`icl_heads.tasks.load_task` builds the task from them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path


def as_text(value: object, where: str) -> str:
    """``value`` as example text: a str as is, a finite number as ``str(value)``;
    ``TypeError`` naming ``where`` otherwise.

    Example::

        as_text(3, "example 0 input")        # '3'
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    raise TypeError(
        f"{where} is {value!r} ({type(value).__name__}); inputs and labels must be "
        "strings (or numbers, used as their str)."
    )


def read_utf8(path: Path) -> str:
    """The text of task file ``path``, decoded as UTF-8 (a leading byte-order mark
    ignored); ``ValueError`` naming the file (and the line) for UTF-16, bytes that are not
    UTF-8 and NUL bytes.

    Example::

        read_utf8(Path("my_task.csv"))
    """
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError(
            f"Task file {path} is UTF-16 (it starts with a UTF-16 byte-order mark); "
            "re-save it as UTF-8."
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"Task file {path} is not valid UTF-8: byte {data[err.start : err.start + 1]!r} at "
            f"line {line} ({err.reason}); re-save the file as UTF-8 (e.g. 'iconv -f latin1 -t "
            "utf-8')."
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ValueError(
            f"Task file {path} holds a NUL byte (line {line}): it is not a text file, "
            "or it is UTF-16 without a byte-order mark; re-save it as UTF-8."
        )
    return text


def parse_jsonl(text: str, *, source: str) -> tuple[list[tuple[str, str]], list[int]]:
    """Rows ``(input, label)`` of JSONL ``text`` and the line number of each; ``ValueError``
    naming ``source`` and the line for a bad line.

    Example::

        parse_jsonl('{"input": "a", "label": "b"}', source="t.jsonl")   # ([('a', 'b')], [1])
    """
    rows, lines = [], []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            hint = (
                " It looks like a JSON array; write one object per line (JSONL)."
                if line.lstrip().startswith("[")
                else ""
            )
            raise ValueError(f"{source}, line {i}: not valid JSON ({err.msg}).{hint}") from None
        if not isinstance(obj, dict):
            raise ValueError(
                f"{source}, line {i}: each line must be an object with keys "
                f"'input' and 'label', got {type(obj).__name__}."
            )
        missing = [key for key in ("input", "label") if key not in obj]
        if missing:
            raise ValueError(
                f"{source}, line {i}: no {' or '.join(map(repr, missing))} key; "
                "each line must be an object with keys 'input' and 'label'."
            )
        try:
            rows.append(
                (
                    as_text(obj["input"], f"{source}, line {i}: 'input'"),
                    as_text(obj["label"], f"{source}, line {i}: 'label'"),
                )
            )
        except TypeError as err:
            raise ValueError(str(err)) from None
        lines.append(i)
    return rows, lines


def parse_csv(text: str, *, source: str) -> tuple[list[tuple[str, str]], list[int]]:
    """Rows ``(input, label)`` of CSV ``text`` (header with ``input`` and ``label``) and the
    (first) line number of each; ``ValueError`` naming ``source`` and the line for a bad row.

    Example::

        parse_csv("input,label\na,b\n", source="t.csv")     # ([('a', 'b')], [2])
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, lines = [], []
    header: list[str] | None = None
    line = 1
    try:
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue  # a blank line or a row of empty cells
            if header is None:
                header = [c.strip().lower() for c in cells]
                for key in ("input", "label"):
                    if header.count(key) != 1:
                        raise ValueError(
                            f"{source}: the CSV needs a header with columns 'input' and 'label' "
                            f"once each (found {cells} on line {start})."
                        )
                col_x, col_y = header.index("input"), header.index("label")
                continue
            if len(cells) > len(header):
                raise ValueError(
                    f"{source}, line {start}: {len(cells)} cells but the header has "
                    f"{len(header)} columns; put an input or label that contains a comma in "
                    'double quotes, e.g. "good, not great",negative.'
                )
            for col, key in ((col_x, "input"), (col_y, "label")):
                if col >= len(cells) or not cells[col].strip():
                    raise ValueError(
                        f"{source}, line {start}: the {key} cell is missing or "
                        f"empty ({cells}); every row needs an input and a label."
                    )
            rows.append((cells[col_x], cells[col_y]))
            lines.append(start)
    except csv.Error as err:
        raise ValueError(f"{source}, line {reader.line_num}: not valid CSV ({err}).") from None
    if header is None:
        raise ValueError(f"{source}: the CSV needs a header with columns 'input' and 'label'.")
    return rows, lines
