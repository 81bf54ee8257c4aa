"""How many prompts would settle a verdict: the per-claim power table of the results pages.

A statistic with a 95% interval ``[low, high]`` at ``n`` prompts is

* **resolved** at this ``n`` when its verdict is ``holds`` or ``does not hold`` (the
  interval excludes the null) or ``no effect larger than the margin`` (the interval lies
  inside ``null ± margin``);
* **needs n**: otherwise, when its estimate lies outside the margin, the ``n`` at which
  an interval of the same design would exclude the null with 80% power (two-sided
  α = 0.05), the standard error read from the interval's width and scaled as ``1/√n``::

      SE = (high − low) / (2 z₀.₉₇₅),   n* = ⌈ n · ((z₀.₉₇₅ + z₀.₈) · SE / |δ|)² ⌉

  with ``δ`` the estimate minus the null (a normal approximation, same design);
* **no n will** (the effect is below the margin) when the estimate lies inside
  ``null ± margin``: more data would at best give "no effect larger than the margin", at
  about ``n* = ⌈ n · ((z₀.₉₇₅ + z₀.₈) · SE / (margin − |δ|))² ⌉``;
* **untestable** when the design cannot answer (more data does not help), and
  **not by n** when the interval is not over prompts (over the model's heads, or pooled
  over tasks), so that it does not shrink as ``1/√n`` with more prompts.

``docs/methods.md`` ("Power: the n that would settle a verdict") states the formula.

Example::

    resolving_n(-0.14, -0.28, 0.0004, 64, null=0.0, margin=0.05, verdict="unclear")
    # {"status": "needs n", "n_needed": 132, 'target': 'CI excluding 0', ...}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
from scipy.stats import norm

from .verdict_rules import (
    DOES_NOT_HOLD,
    HOLDS,
    NO_LARGER_EFFECT,
    UNCLEAR,
    UNTESTABLE,
    VERDICTS,
)

#: The power at which the table's n is computed.
POWER = 0.8
#: The two-sided level of the test (the verdicts' 95% intervals).
ALPHA = 0.05

RESOLVED = "resolved"
NEEDS_N = "needs n"
NO_N_WILL = "no n will"
#: The status of an untestable statistic (a degenerate design: more data does not help).
POWER_UNTESTABLE = "untestable"
NOT_BY_N = "not by n"
UNDEFINED = "undefined"
#: Every status of :func:`resolving_n`, from settled to unknown.
STATUSES = (RESOLVED, NEEDS_N, NO_N_WILL, POWER_UNTESTABLE, NOT_BY_N, UNDEFINED)

_LEVEL_Z = norm.ppf(1 - ALPHA / 2)


def required_n(
    n: int, se: float, distance: float, *, power: float = POWER, alpha: float = ALPHA
) -> int:
    """The smallest ``n*`` at which a normal interval of the same design, whose standard
    error is ``se`` at ``n`` and scales as ``1/√n``, clears ``distance`` (the effect's
    distance from the null, or from the margin for equivalence) with probability
    ``power`` at two-sided level ``alpha``: ``⌈ n ((z_{1−α/2} + z_power) se / distance)² ⌉``.

    Example::

        required_n(64, 0.0715, 0.14)        # 132

    Raises:
        ValueError: ``n`` is not a positive integer, ``se`` is negative, ``distance`` is
            not positive, or ``power``/``alpha`` lie outside (0, 1).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"required_n: n must be a positive integer (the prompts), got {n!r}.")
    if not math.isfinite(se) or se < 0:
        raise ValueError(f"required_n: se must be a finite number >= 0, got {se!r}.")
    if not math.isfinite(distance) or distance <= 0:
        raise ValueError(f"required_n: distance must be a finite number > 0, got {distance!r}.")
    for name, value in (("power", power), ("alpha", alpha)):
        if not 0 < value < 1:
            raise ValueError(
                f"required_n: {name} must lie strictly between 0 and 1, got {value!r}."
            )
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return max(1, math.ceil(n * (z * se / distance) ** 2 - 1e-9))


def resolving_n(
    value: float,
    ci_low: float,
    ci_high: float,
    n: int | None,
    *,
    null: float = 0.0,
    margin: float | None = None,
    verdict: str,
    reason: str | None = None,
    unit: str = "prompts",
) -> dict:
    """Whether a statistic's verdict is settled at its ``n`` and, if not, the ``n`` that
    would settle it at 80% power (see the module docstring for the rule and formula).

    ``value, ci_low, ci_high``: the statistic and its 95% interval at ``n`` ``unit``;
    ``null``, ``margin``, ``verdict`` (and the untestable ``reason``): as the verdict
    rules judged it. ``unit`` other than ``"prompts"`` (``"heads"``: a bootstrap over the
    model's heads; ``"tasks"``: pooled over tasks, whose interval has ``k − 1`` degrees of
    freedom and a between-task variance) means the interval does not shrink as ``1/√n``
    with more prompts: status ``not by n`` (``no n will`` still applies inside the margin).

    Example::

        resolving_n(0.01, -0.05, 0.07, 64, margin=0.05, verdict="unclear")["status"]
        # 'no n will'

    Returns:
        ``{"status", "n", "n_needed", "target", "text"}``: ``status`` one of
        :data:`STATUSES`; ``n_needed`` the approximate n (None where none applies);
        ``target`` what resolving means there (``"CI excluding 0"``, ``"CI inside ±0.05"``,
        ``""``); ``text`` the table cell.

    Raises:
        ValueError: ``verdict`` is not a verdict, or ``n`` is not a positive integer where
            the interval is over prompts.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"resolving_n: unknown verdict {verdict!r}; one of {list(VERDICTS)}.")
    out = {"status": UNDEFINED, "n": n, "n_needed": None, "target": "", "text": ""}
    m = float(margin) if margin is not None and math.isfinite(float(margin)) else math.nan
    null = float(null)
    if verdict == UNTESTABLE:
        why = f" ({reason})" if reason else ""
        return out | {"status": POWER_UNTESTABLE, "text": f"untestable{why}: no n will"}
    if verdict in (HOLDS, DOES_NOT_HOLD):
        return out | {
            "status": RESOLVED,
            "target": f"CI excluding {null:g}",
            "text": f"resolved at this n (CI excludes {null:g})",
        }
    if verdict == NO_LARGER_EFFECT:
        return out | {
            "status": RESOLVED,
            "target": f"CI inside ±{m:.3g}",
            "text": f"resolved at this n (CI inside {null:g} ± {m:.3g})",
        }
    assert verdict == UNCLEAR
    numbers = (value, ci_low, ci_high)
    if any(x is None or not math.isfinite(float(x)) for x in numbers):
        return out | {"text": "undefined statistic: no n computed"}
    by_n = unit == "prompts"
    if by_n and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(
            f"resolving_n: n must be a positive integer (the prompts behind the interval), "
            f"got {n!r}."
        )
    se = (float(ci_high) - float(ci_low)) / (2 * _LEVEL_Z)
    delta = abs(float(value) - null)
    if math.isfinite(m) and delta <= m:
        target = f"CI inside ±{m:.3g}"
        if delta < m and by_n:
            needed = required_n(n, se, m - delta)
            tail = f"; n ≈ {needed} for 'no effect larger than {m:.3g}'"
        else:
            needed, tail = None, ""
        return out | {
            "status": NO_N_WILL,
            "n_needed": needed,
            "target": target,
            "text": f"no n will: effect below the margin ±{m:.3g}{tail}",
        }
    if not by_n:
        return out | {
            "status": NOT_BY_N,
            "text": f"not by n: the interval is over {unit}, and more prompts do not narrow it "
            "as 1/√n",
        }
    if delta == 0:
        return out | {"status": NO_N_WILL, "text": "no n will: the estimate is exactly the null"}
    needed = required_n(n, se, delta)
    return out | {
        "status": NEEDS_N,
        "n_needed": needed,
        "target": f"CI excluding {null:g}",
        "text": f"n ≈ {needed} (CI excluding {null:g}, 80% power)",
    }


def statistic_power(test: Mapping, n: int | None, *, unit: str = "prompts") -> dict:
    """:func:`resolving_n` of one test dict of a claim verdict (the ``tests`` of
    :func:`~icl_heads.experiments.trtl.claim_verdict` or
    :func:`~icl_heads.experiments.geometry.geometry_claim_verdict`: ``value, ci_low,
    ci_high, null, margin, verdict``, + ``reason``); a missing test is ``undefined``.

    Example::

        statistic_power(claim_verdict("tr_ablation_label_space", cells)["tests"][0], 64)
    """
    if test.get("missing") is True:
        return {"status": UNDEFINED, "n": n, "n_needed": None, "target": "",
                "text": "missing result"}  # fmt: skip
    return resolving_n(
        test["value"],
        test["ci_low"],
        test["ci_high"],
        n,
        null=test.get("null", 0.0),
        margin=test.get("margin"),
        verdict=test["verdict"],
        reason=test.get("reason"),
        unit=unit,
    )


def claim_power(verdict: str, per_test: Sequence[Mapping]) -> str:
    """One claim's power cell from its verdict and its tests' :func:`resolving_n` results:
    resolved when the claim's verdict is; untestable when it is; else the largest ``n``
    its unclear statistics need (every one must resolve), ``no n will`` when one of them
    lies below its margin, or the reason no ``n`` is given.

    Example::

        claim_power("unclear", [resolving_n(-0.14, -0.28, 0.0004, 64, verdict="unclear")])
        # "n ≈ 132"
    """
    if verdict not in VERDICTS:
        raise ValueError(f"claim_power: unknown verdict {verdict!r}; one of {list(VERDICTS)}.")
    if verdict in (HOLDS, DOES_NOT_HOLD, NO_LARGER_EFFECT):
        return "resolved at this n"
    if verdict == UNTESTABLE:
        return "no n will (a degenerate design)"
    statuses = [p["status"] for p in per_test]
    if NO_N_WILL in statuses:
        return "no n will: effect below the margin"
    if UNDEFINED in statuses:
        return "undefined statistic: no n computed"
    if NOT_BY_N in statuses:
        return "not by n (an interval over heads or tasks)"
    needed = [int(p["n_needed"]) for p in per_test if p["status"] == NEEDS_N]
    return f"n ≈ {max(needed)}" if needed else "unclear"


#: The columns of :func:`power_table`.
POWER_COLUMNS = (
    "model", "claim", "task", "statistic", "value", "ci_low", "ci_high", "null", "margin", "n",
    "unit", "verdict", "claim_verdict", "status", "n_needed", "target", "power",
)  # fmt: skip


def power_table(entries: Sequence[Mapping]) -> pd.DataFrame:
    """The power table: one row per statistic of a claim verdict (per model and task, or
    ``"all tasks"``), with its effect, interval, verdict and :func:`statistic_power`.

    ``entries``: dicts with ``model, claim, task, statistic`` (labels), ``test`` (a test
    dict of a claim verdict), ``n`` (the prompts behind its interval, per task for a
    pooled row), and optional ``unit`` (``"prompts"``) and ``claim_verdict``.

    Example::

        power_table([{"model": "m", "claim": "c", "task": "t", "statistic": "TR - TL",
                      "test": claim_verdict(claim, cells)["tests"][0], "n": 64}])

    Returns:
        A DataFrame with :data:`POWER_COLUMNS` (``power``: the table cell's text).

    Raises:
        ValueError: an entry lacks one of the keys above (the message names it).
    """
    rows = []
    for i, entry in enumerate(entries):
        missing = [
            k for k in ("model", "claim", "task", "statistic", "test", "n") if k not in entry
        ]
        if missing:
            raise ValueError(f"power_table: entry {i} lacks {missing}; got keys {sorted(entry)}.")
        test, unit = entry["test"], entry.get("unit", "prompts")
        got = statistic_power(test, entry["n"], unit=unit)
        rows.append(
            {
                **{k: entry[k] for k in ("model", "claim", "task", "statistic", "n")},
                **{k: test.get(k, math.nan) for k in ("value", "ci_low", "ci_high", "null")},
                "margin": test.get("margin", math.nan),
                "unit": unit,
                "verdict": test.get("verdict", UNCLEAR),
                "claim_verdict": entry.get("claim_verdict", test.get("verdict", UNCLEAR)),
                "status": got["status"],
                "n_needed": got["n_needed"],
                "target": got["target"],
                "power": got["text"],
            }
        )
    return pd.DataFrame(rows, columns=list(POWER_COLUMNS))


__all__ = [
    "ALPHA",
    "NEEDS_N",
    "NOT_BY_N",
    "NO_N_WILL",
    "POWER",
    "POWER_COLUMNS",
    "POWER_UNTESTABLE",
    "RESOLVED",
    "STATUSES",
    "UNDEFINED",
    "claim_power",
    "power_table",
    "required_n",
    "resolving_n",
    "statistic_power",
]
