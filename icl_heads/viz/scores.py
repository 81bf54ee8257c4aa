"""What each score is, in words: a human title, a one-line definition and its unit, keyed
by the score's ``name`` (the ``name`` of a :class:`~icl_heads.heads.HeadScores`, e.g.
``"tr_score"``). Every figure and the report take titles and captions from here (one
place); a name not listed falls back to a humanised name (``"my_score"`` -> "My score").
The definitions follow ``docs/methods.md``."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreInfo:
    """A score's metadata.

    Attributes:
        title: a human title, e.g. ``"TR score"``.
        caption: what the score measures, e.g. ``"label-space write ‖P a‖² ..."``.
        unit: the unit of its values, e.g. ``"squared residual-stream units"``.
    """

    title: str
    caption: str = ""
    unit: str = ""

    def describe(self) -> str:
        """``"<title>: <caption> (<unit>)"``, the line a figure's caption shows."""
        text = self.title + (f": {self.caption}" if self.caption else "")
        return text + (f" (unit: {self.unit})" if self.unit else "")


#: The scores the toolkit makes, by name.
SCORE_INFO: dict[str, ScoreInfo] = {
    "tr_score": ScoreInfo(
        "TR score",
        "how much the head writes into the label subspace, ‖P a‖² of its output a at the "
        "query position (P: projection onto the label unembeddings), mean over prompts",
        "squared residual-stream units",
    ),
    "tl_score": ScoreInfo(
        "TL score",
        "how much the head pushes the gold label over the others, aᵀ(u_gold − mean of the other "
        "labels' u), mean over prompts; negative: it pushes against the gold label",
        "logits",
    ),
    "previous_token_score": ScoreInfo(
        "Previous-token score",
        "share of the head's attention on the previous token",
        "fraction of attention, 0-1",
    ),
    "duplicate_token_score": ScoreInfo(
        "Duplicate-token score",
        "share of the head's attention on earlier copies of the current token",
        "fraction of attention, 0-1",
    ),
    "induction_score": ScoreInfo(
        "Induction score",
        "share of the head's attention on the token after an earlier copy of the current token",
        "fraction of attention, 0-1",
    ),
    "label_attention_score": ScoreInfo(
        "Label attention",
        "attention from the query position to the demonstrations' label tokens",
        "fraction of attention, 0-1",
    ),
    "gold_label_share": ScoreInfo(
        "Gold-label share",
        "share of the head's label attention that lands on labels equal to the gold label "
        "(chance: the fraction of demonstrations carrying it)",
        "fraction of label attention, 0-1",
    ),
}

#: Metrics of single-head ablation effects (``delta_<metric>`` maps): title, unit.
METRIC_INFO: dict[str, tuple[str, str]] = {
    "accuracy": ("accuracy", "fraction of prompts"),
    "label_space_rate": ("label-space rate", "fraction of prompts"),
    "in_space_accuracy": ("in-space accuracy", "fraction of prompts"),
    "logit_diff": ("logit difference", "logits"),
}
ACRONYMS = {"tr": "TR", "tl": "TL", "ih": "IH", "pth": "PTH", "icl": "ICL", "tsla": "TSLA"}


def score_info(name: str) -> ScoreInfo:
    """The metadata of the score called ``name``: listed in :data:`SCORE_INFO`, a
    ``delta_<metric>`` ablation effect, or (unknown) a humanised name without caption.

    Example::

        score_info("tr_score").title  # "TR score"
        score_info("delta_logit_diff").title  # "Change in logit difference"
        score_info("my_new_score").title  # "My new score"
    """
    name = str(name)
    if name in SCORE_INFO:
        return SCORE_INFO[name]
    if name.startswith("delta_") and name[len("delta_") :] in METRIC_INFO:
        metric, unit = METRIC_INFO[name[len("delta_") :]]
        return ScoreInfo(
            f"Change in {metric}",
            f"{metric} with the head ablated minus without (negative: ablating it lowers "
            f"the {metric})",
            unit,
        )
    return ScoreInfo(humanise(name))


def humanise(name: str) -> str:
    """``"snake_case_name"`` as words with a capital first letter, acronyms kept.

    Example::

        humanise("tr_score")  # "TR score"
    """
    words = [w for w in re.split(r"[_\s]+", str(name)) if w]
    if not words:
        return str(name)
    words = [ACRONYMS.get(w.lower(), w) for w in words]
    first = words[0]
    words[0] = first if first.isupper() else first[:1].upper() + first[1:]
    return " ".join(words)


def wrap(text: str, width: int = 110) -> str:
    """Plain text wrapped to ``width`` characters with ``<br>`` (Plotly's line break).

    Example::

        wrap("a long caption ...", 40)
    """
    return "<br>".join(textwrap.wrap(text, width)) if text else ""
