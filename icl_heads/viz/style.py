"""The figures' shared look and text: the condition palette, the colours of named
conditions, the conditions read as "nothing changed", and the text helpers every figure
uses (hovertemplate escaping, token labels, the settings suffix of a title)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: Colours of conditions, in order (Plotly's D3 palette, blue and red first).
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
#: Fixed colours of the conditions the experiments name (others take :data:`PALETTE`).
CONDITION_COLOURS = {
    "baseline": "#7f7f7f",
    "clean": "#7f7f7f",
    "zero_shot": "#7f7f7f",
    "TR": "#d62728",
    "TL": "#1f77b4",
    "random_TR": "#ff9896",
    "random_TL": "#aec7e8",
    "PTH": "#ff7f0e",
    "IH": "#2ca02c",
    "random_PTH": "#ffbb78",
    "random_IH": "#98df8a",
    "icl": "#9467bd",
    "task_vector": "#8c564b",
}
#: Condition names read as "nothing was changed" (drawn as the baseline line of bar charts).
BASELINE_CONDITIONS = ("baseline", "clean", "none", "unablated", "no_intervention")
#: Outline colour of the top-k heads and of a selected head.
OUTLINE = "black"


def colours_for(conditions: Sequence[str]) -> dict[str, str]:
    """A colour per condition: the fixed ones of :data:`CONDITION_COLOURS`, then the
    palette's unused colours in order, then Plotly's 24-colour palette: distinct colours for
    up to 30-odd conditions before any repeats.

    Example::

        colours_for(["TR", "random_TR#0", "custom"])  # {"TR": "#d62728", ...}
    """
    from plotly.colors import qualitative

    fixed = set(CONDITION_COLOURS.values())
    spare = [c for c in PALETTE if c not in fixed]
    spare += [c for c in qualitative.Dark24 if c.lower() not in fixed | set(spare)]
    out: dict[str, str] = {}
    i = 0
    for condition in conditions:
        if condition in CONDITION_COLOURS and CONDITION_COLOURS[condition] not in out.values():
            out[condition] = CONDITION_COLOURS[condition]
            continue
        unused = [c for c in spare if c not in out.values()]
        out[condition] = unused[0] if unused else spare[i % len(spare)]
        i += 1
    return out


def rgba(hex_color: str, alpha: float) -> str:
    """A ``#rrggbb`` colour with transparency, as Plotly's ``rgba(...)`` text.

    Example::

        rgba("#1f77b4", 0.15)  # "rgba(31,119,180,0.15)"
    """
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def escape(text: object) -> str:
    """Text safe inside a Plotly hovertemplate (no ``%{...}`` substitutions, no tags).

    Example::

        escape("<b>%{x}</b>")  # "&lt;b&gt;%(x)&lt;/b&gt;"
    """
    return str(text).replace("<", "&lt;").replace(">", "&gt;").replace("{", "(").replace("}", ")")


def display_token(token: str) -> str:
    """A token as an axis label: a newline as ``⏎``, a tab as ``⇥``, a carriage return as
    ``␍`` (visible symbols, never the two characters ``\\n``).

    Example::

        display_token("\\n\\n")  # "⏎⏎"
    """
    return token.replace("\r\n", "⏎").replace("\n", "⏎").replace("\t", "⇥").replace("\r", "␍")


def describe_settings(settings) -> str:
    """A short title suffix from a result's settings: model, task, k, n."""
    if settings is None:
        return ""
    parts = []
    model = getattr(settings, "model", None)
    if model:
        parts.append(f"model={model}")
    prompts = next(
        (
            getattr(settings, a)
            for a in ("prompts", "source", "icl_prompts")
            if getattr(settings, a, None) is not None
        ),
        None,
    )
    if prompts is None and hasattr(settings, "task") and hasattr(settings, "k"):
        prompts = settings
    if prompts is not None and hasattr(prompts, "task"):
        parts.append(f"task={prompts.task}, k={prompts.k}, n={prompts.n}")
    elif isinstance(getattr(settings, "task", None), str):
        parts.append(f"task={settings.task}")
    return ", ".join(parts)


def format_number(value: float | None) -> str:
    """One number format for every value a table or hover shows: 4 significant digits in
    plain decimals (no exponents), whole numbers from 1000 up; magnitudes below 0.00005
    read ``0.0000``; NaN and None read ``—``.

    Example::

        [format_number(v) for v in (0.882641, 6.585e-8, 113.24, 55939.2)]
        # ["0.8826", "0.0000", "113.2", "55939"]
    """
    if value is None:
        return "—"
    value = float(value)
    if not math.isfinite(value):
        return "—"
    if value == 0:
        return "0"
    if abs(value) < 5e-5:
        return "0.0000"
    decimals = max(0, 3 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def chance_for(chance: float | Mapping[str, float] | None, metric: str) -> float | None:
    """The chance line of ``metric``: ``chance`` itself (one level for every metric), its
    entry for ``metric`` (a mapping; ``None`` where it has none), or ``None`` (no line).

    Example::

        chance_for({"accuracy": 0.25}, "accuracy")   # 0.25
    """
    if chance is None:
        return None
    if isinstance(chance, Mapping):
        value = chance.get(metric)
        return None if value is None else float(value)
    return float(chance)
