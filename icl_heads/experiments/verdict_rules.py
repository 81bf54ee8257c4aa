"""Verdict rules shared by every experiment family (re-exported by
:mod:`icl_heads.experiments.kit`).

* **Vocabulary** (:data:`VERDICTS`): ``holds`` / ``does not hold`` / ``no effect larger than
  the margin`` (the whole interval lies within ``null ± margin``; :func:`margin_for` states
  each claim's margin) / ``untestable`` (a degenerate design: identical head sets, a
  metric at its floor or ceiling in every condition, a no-op comparison, an undefined
  statistic; the caller says which) / ``unclear``.
* **One statistic** (:func:`judge`), **one claim** (:func:`combine` of its statistics),
  **many seeds** (:func:`pool_seeds`: the mean, with a conservative interval), **many
  tasks** (:func:`pool_claim`: a random-effects estimate of each statistic,
  :func:`pool_estimates`; untestable tasks excluded and counted).
* **Intervals built from saved intervals** without their covariances, conservatively
  (:func:`worst_case_sum`, :func:`grid_mean`, :func:`noise_corrected_stability`,
  :func:`rescale_interval`).

Every margin and rule here was fixed in code before the verdicts were recomputed on the
saved results; ``docs/methods.md`` ("Verdict rules") gives the reasons.

Example::

    judge(-0.2, -0.3, -0.1, sign=-1, null=0.0, margin=0.05)     # 'holds'
    judge(0.01, -0.02, 0.03, sign=-1, null=0.0, margin=0.05)    # 'no effect larger than the margin'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
NO_LARGER_EFFECT = "no effect larger than the margin"
UNTESTABLE = "untestable"
UNCLEAR = "unclear"
#: The verdict vocabulary of every claim.
VERDICTS = (HOLDS, DOES_NOT_HOLD, NO_LARGER_EFFECT, UNTESTABLE, UNCLEAR)

#: Equivalence margin of a difference of rates or accuracies (fractions of prompts).
RATE_MARGIN = 0.05
#: Equivalence margin of a correlation, a difference of correlations, and of the
#: noise-corrected stability difference.
CORRELATION_MARGIN = 0.1
#: Equivalence margin of a top-k overlap (a fraction of the k heads).
OVERLAP_MARGIN = 0.1
#: Equivalence margin of an onset difference, in layers (states).
LAYER_MARGIN = 1.0
#: Equivalence margin of a quantity without a natural scale (cosines, logit differences),
#: as a fraction of its unperturbed value.
RELATIVE_MARGIN = 0.1

#: Metrics whose values are fractions of prompts (margin :data:`RATE_MARGIN`).
RATE_METRICS = (
    "accuracy",
    "label_space_rate",
    "in_space_accuracy",
    "probe_accuracy",
    "logit_lens_accuracy",
)
_LEVEL = 0.95
_EXACT = 1e-12


def margin_for(metric: str, reference: float | None = None) -> float:
    """The equivalence margin of a statistic on ``metric`` (a ``delta_`` prefix is dropped):
    :data:`RATE_MARGIN` for rates and accuracies, :data:`CORRELATION_MARGIN` for
    correlations (names with ``spearman``/``pearson``/``stability``), :data:`OVERLAP_MARGIN`
    for ``top_k_overlap``, :data:`LAYER_MARGIN` for onsets, else :data:`RELATIVE_MARGIN`
    times ``|reference|`` (the metric's unperturbed value; NaN without one: no equivalence
    is judged).

    Example::

        margin_for("delta_label_space_rate"), margin_for("delta_alignment", 0.067)
        # (0.05, 0.0067)
    """
    if not isinstance(metric, str):
        raise TypeError(f"metric must be a metric name, got {metric!r}.")
    name = metric.removeprefix("delta_")
    if name in RATE_METRICS:
        return RATE_MARGIN
    if any(word in name for word in ("spearman", "pearson", "stability")):
        return CORRELATION_MARGIN
    if name == "top_k_overlap":
        return OVERLAP_MARGIN
    if "onset" in name:
        return LAYER_MARGIN
    if reference is None or not math.isfinite(float(reference)):
        return math.nan
    return RELATIVE_MARGIN * abs(float(reference))


def judge(
    value: float, low: float, high: float, *, sign: int, null: float, margin: float | None = None
) -> str:
    """The verdict of one statistic that a claim predicts to lie above (``sign=+1``) or
    below (``-1``) ``null``, from its interval ``[low, high]``:

    * ``unclear`` with a NaN (the caller says when that is a degenerate design);
    * ``does not hold`` when the interval is exactly the null (no effect on any prompt);
    * ``no effect larger than the margin`` when ``margin`` is given and the whole interval
      lies within ``null ± margin`` (even when it excludes the null: the effect is then too
      small to matter);
    * ``holds`` when the interval lies on the predicted side; ``does not hold`` when on the
      other side; else ``unclear``.

    Example::

        judge(0.5, 0.2, 0.8, sign=+1, null=0.0)       # 'holds'
    """
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}.")
    if any(isinstance(x, float) and math.isnan(x) for x in (value, low, high, null)):
        return UNCLEAR
    if low == high == null:
        return DOES_NOT_HOLD
    if margin is not None and math.isfinite(margin) and margin > 0:
        if null - margin <= low and high <= null + margin:
            return NO_LARGER_EFFECT
    if sign > 0 and low > null or sign < 0 and high < null:
        return HOLDS
    if sign > 0 and high < null or sign < 0 and low > null:
        return DOES_NOT_HOLD
    return UNCLEAR


def combine(verdicts: Sequence[str]) -> str:
    """The verdict of a claim that predicts all its statistics at once: ``does not hold``
    if one does not hold, else ``no effect larger than the margin`` if one shows no
    effect, else ``untestable`` if one cannot be tested in this design, else ``unclear`` if
    one is unclear, else (all hold) ``holds``; ``unclear`` for no statistic.

    Example::

        combine(["holds", "untestable"])      # 'untestable'
    """
    verdicts = list(verdicts)
    _check_vocabulary(verdicts)
    if not verdicts:
        return UNCLEAR
    for verdict in (DOES_NOT_HOLD, NO_LARGER_EFFECT, UNTESTABLE, UNCLEAR):
        if verdict in verdicts:
            return verdict
    return HOLDS


def pool_verdicts(verdicts: Sequence[str]) -> str:
    """One verdict over tasks from their verdicts alone (a vote; :func:`pool_claim` pools the
    statistics instead): untestable tasks are left out; the verdict the others all share,
    else ``unclear``; ``untestable`` when every task is.

    Example::

        pool_verdicts(["holds", "untestable", "holds"])       # 'holds'
    """
    verdicts = list(verdicts)
    _check_vocabulary(verdicts)
    testable = [v for v in verdicts if v != UNTESTABLE]
    if verdicts and not testable:
        return UNTESTABLE
    if testable and len(set(testable)) == 1 and testable[0] != UNCLEAR:
        return testable[0]
    return UNCLEAR


def verdict_text(verdict: str, *, margin: float | None = None, reason: str | None = None) -> str:
    """A verdict as a reader sees it: the margin in ``no effect larger than 0.05``, the
    reason in ``untestable (identical TR and TL sets)``.

    Example::

        verdict_text("no effect larger than the margin", margin=0.05)  # 'no effect larger than 0.05'
    """
    _check_vocabulary([verdict])
    if verdict == NO_LARGER_EFFECT and margin is not None and math.isfinite(margin):
        return f"no effect larger than {margin:.3g}"
    if verdict == UNTESTABLE and reason:
        return f"untestable ({reason})"
    return verdict


# =========================================================================== degenerate designs


def floor_or_ceiling(levels: Sequence[float], *, floor: float = 0.0, ceiling: float = 1.0) -> str:
    """``"floor"`` (``"ceiling"``) when every given level is exactly ``floor``
    (``ceiling``), else ``""``; NaN levels are skipped, none left gives ``""``.

    Example::

        floor_or_ceiling([1.0, 1.0, 1.0])     # 'ceiling'
    """
    finite = [float(x) for x in levels if x is not None and math.isfinite(float(x))]
    if not finite:
        return ""
    if all(abs(x - floor) <= _EXACT for x in finite):
        return "floor"
    if all(abs(x - ceiling) <= _EXACT for x in finite):
        return "ceiling"
    return ""


def is_no_op(value: float, low: float, high: float) -> bool:
    """Whether a saved effect is exactly 0 with a zero-width interval (an intervention that
    changed nothing, e.g. a task vector injected at state 0)."""
    return all(math.isfinite(x) and abs(x) <= _EXACT for x in (value, low, high))


# =========================================================================== intervals


def _se(low: float, high: float, level: float = _LEVEL) -> float:
    return (float(high) - float(low)) / (2 * norm.ppf(0.5 + level / 2))


def worst_case_sum(
    terms: Sequence[tuple[float, float, float, float]], level: float = _LEVEL
) -> tuple[float, float, float]:
    """``Σ c_i x_i`` with an interval valid whatever the correlation between the ``x_i``:
    ``terms`` are ``(c_i, value_i, low_i, high_i)`` with ``level`` intervals; each standard
    error is read from its interval's width (normal approximation) and the sum's is bounded
    by ``Σ |c_i| se_i`` (its value at perfect correlation, the worst case).

    Example::

        worst_case_sum([(1, 0.5, 0.4, 0.6), (-1, 0.2, 0.1, 0.3)])   # (0.3, ~0.1, ~0.5)
    """
    z = norm.ppf(0.5 + level / 2)
    value = sum(c * v for c, v, _, _ in terms)
    se = sum(abs(c) * _se(lo, hi, level) for c, _, lo, hi in terms)
    return float(value), float(value - z * se), float(value + z * se)


def grid_mean(
    values: Sequence[float], lows: Sequence[float], highs: Sequence[float]
) -> tuple[float, float, float]:
    """The mean of statistics measured on the same prompts (e.g. over a steering α grid)
    with a conservative interval: the mean of their bounds (:func:`worst_case_sum` with
    ``c_i = 1/m``: exact when the statistics are perfectly correlated, wider otherwise).

    Example::

        grid_mean([0.1, 0.3], [0.0, 0.2], [0.2, 0.4])       # (0.2, 0.1, 0.3)
    """
    if not len(values) == len(lows) == len(highs) or not len(values):
        raise ValueError(
            f"grid_mean needs as many values as bounds, at least one: got {len(values)} "
            f"values, {len(lows)} lows, {len(highs)} highs."
        )
    return float(np.mean(values)), float(np.mean(lows)), float(np.mean(highs))


def rescale_interval(
    value: float, low: float, high: float, from_level: float, to_level: float = _LEVEL
) -> tuple[float, float]:
    """A symmetric normal-approximation interval at ``from_level`` (e.g. a Bonferroni
    interval) rescaled to ``to_level``.

    Example::

        rescale_interval(0.0, -0.03, 0.03, 1 - 0.05 / 18)   # about (-0.021, 0.021)
    """
    for name, level in (("from_level", from_level), ("to_level", to_level)):
        if not 0 < level < 1:
            raise ValueError(f"{name} must lie strictly between 0 and 1, got {level!r}.")
    half = _se(low, high, from_level) * norm.ppf(0.5 + to_level / 2)
    return float(value - half), float(value + half)


def spearman_brown(r: float) -> float:
    """The agreement of two maps from ``n`` prompts each, predicted from the agreement ``r``
    of two maps from ``n/2`` (Spearman–Brown: ``2 r / (1 + r)``).

    Example::

        spearman_brown(0.5)        # 0.667
    """
    return 2 * r / (1 + r)


def noise_corrected_stability(
    tr_agreement: tuple[float, float, float],
    tr_split_half: tuple[float, float, float],
    tl_agreement: tuple[float, float, float],
    tl_split_half: tuple[float, float, float],
    level: float = _LEVEL,
) -> tuple[float, float, float]:
    """How much more TL's map moves than TR's under a perturbation, each measured against
    its own noise: ``D = drop_TL − drop_TR`` with ``drop = 1 − a / spearman_brown(s)``,
    ``a`` the map's agreement (perturbed vs gold, ``n`` prompts each), ``s`` its gold
    split-half agreement (``n/2`` vs ``n/2``). ``D > 0``: TR is the more stable map. Each
    argument is ``(value, low, high)``; the interval is the delta method with the
    worst-case correlation (:func:`worst_case_sum`). NaN when a split-half agreement's
    interval reaches 0 (no reliable reference at this n).

    Example::

        noise_corrected_stability((0.99, .98, .995), (.99, .98, .995), (.3, .2, .4), (.6, .5, .7))
    """
    for s in (tr_split_half, tl_split_half):
        if not all(math.isfinite(x) for x in s) or s[1] <= 0:
            return math.nan, math.nan, math.nan
    z = norm.ppf(0.5 + level / 2)
    value, se = 0.0, 0.0
    for c, (a, a_lo, a_hi), (s, s_lo, s_hi) in (
        (1.0, tr_agreement, tr_split_half),
        (-1.0, tl_agreement, tl_split_half),
    ):
        ref = spearman_brown(s)
        # D = a_TR / ref_TR - a_TL / ref_TL + 0; the delta method on each ratio, the
        # standard errors added (the worst-case correlation)
        value += c * a / ref
        se += _se(a_lo, a_hi, level) / ref
        se += abs(a) * (2 / (1 + s) ** 2) / ref**2 * _se(s_lo, s_hi, level)
    return float(value), float(value - z * se), float(value + z * se)


# =========================================================================== pooling


def pool_estimates(
    values: Sequence[float], lows: Sequence[float], highs: Sequence[float], level: float = _LEVEL
) -> dict:
    """A random-effects estimate over tasks of one statistic from each task's value and
    ``level`` interval: DerSimonian–Laird between-task variance ``τ²`` and the
    Hartung–Knapp(–Sidik–Jonkman) interval with ``t_{k−1}`` and its ``max(1, q)``
    modification (never narrower than the DerSimonian–Laird one); one task is returned as
    it is. Standard errors come from the intervals' widths (normal approximation; a
    zero-width interval gets 1e-9).

    Example::

        pool_estimates([0.2, 0.3, 0.25], [0.1, 0.2, 0.15], [0.3, 0.4, 0.35])["value"]  # 0.25

    Returns:
        ``{"value", "ci_low", "ci_high", "k", "tau2", "method"}`` (NaN for no task).
    """
    y = np.asarray(values, dtype=float)
    lo = np.asarray(lows, dtype=float)
    hi = np.asarray(highs, dtype=float)
    if not y.shape == lo.shape == hi.shape:
        raise ValueError(
            f"pool_estimates needs one interval per value: {y.size} values, {lo.size} lows, "
            f"{hi.size} highs."
        )
    keep = np.isfinite(y) & np.isfinite(lo) & np.isfinite(hi)
    y, lo, hi = y[keep], lo[keep], hi[keep]
    k = int(y.size)
    if k == 0:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "k": 0,
                "tau2": math.nan, "method": "no task"}  # fmt: skip
    if k == 1:
        return {"value": float(y[0]), "ci_low": float(lo[0]), "ci_high": float(hi[0]), "k": 1,
                "tau2": math.nan, "method": "one task"}  # fmt: skip
    v = np.maximum(((hi - lo) / (2 * norm.ppf(0.5 + level / 2))) ** 2, 1e-18)
    w = 1 / v
    fixed = float((w * y).sum() / w.sum())
    q = float((w * (y - fixed) ** 2).sum())
    c = float(w.sum() - (w**2).sum() / w.sum())
    tau2 = max(0.0, (q - (k - 1)) / c) if c > 0 else 0.0
    ws = 1 / (v + tau2)
    mu = float((ws * y).sum() / ws.sum())
    q_hk = float((ws * (y - mu) ** 2).sum() / (k - 1))
    se = math.sqrt(max(1.0, q_hk) / ws.sum())
    half = float(student_t.ppf(0.5 + level / 2, k - 1)) * se
    return {
        "value": mu,
        "ci_low": mu - half,
        "ci_high": mu + half,
        "k": k,
        "tau2": tau2,
        "method": "random effects (DerSimonian-Laird, Hartung-Knapp interval)",
    }


def pool_claim(per_task: Sequence[Mapping]) -> dict:
    """One claim's verdict over tasks from each task's verdict dict (same claim, same
    tests): each statistic is pooled with :func:`pool_estimates` over the tasks where it
    could be tested (untestable and missing tasks left out and counted), judged with the
    tasks' mean margin (:func:`judge`), and the statistics combined (:func:`combine`);
    ``untestable`` when no task could test a statistic.

    Example::

        pool_claim([claim_verdict(claim, cells[task]) for task in tasks])["verdict"]

    Returns:
        ``{"verdict", "tests": [{..., "k", "untestable", "missing", "method"}], "notes"}``.
    """
    per_task = list(per_task)
    if not per_task:
        return {"verdict": UNCLEAR, "tests": [], "notes": ["no task"]}
    n_tests = {len(got["tests"]) for got in per_task}
    if len(n_tests) != 1:
        raise ValueError(
            f"pool_claim needs the same tests on every task, got {sorted(n_tests)} tests."
        )
    tests = []
    for i in range(n_tests.pop()):
        rows = [got["tests"][i] for got in per_task]
        usable = [
            t
            for t in rows
            if t["verdict"] != UNTESTABLE
            and not t.get("missing")
            and all(math.isfinite(t[x]) for x in ("value", "ci_low", "ci_high"))
        ]
        untestable = sum(t["verdict"] == UNTESTABLE for t in rows)
        missing = len(rows) - untestable - len(usable)
        first = rows[0]
        margins = [t.get("margin", math.nan) for t in usable]
        margins = [m for m in margins if m is not None and math.isfinite(m)]
        margin = float(np.mean(margins)) if margins else math.nan
        nulls = {float(t["null"]) for t in usable}
        null = nulls.pop() if len(nulls) == 1 else 0.0
        shifted = [float(t["null"]) - null for t in usable]  # pool value - null when nulls differ
        pooled = pool_estimates(
            [t["value"] - s for t, s in zip(usable, shifted)],
            [t["ci_low"] - s for t, s in zip(usable, shifted)],
            [t["ci_high"] - s for t, s in zip(usable, shifted)],
        )
        if not usable and untestable:
            verdict = UNTESTABLE
        else:
            verdict = judge(
                pooled["value"],
                pooled["ci_low"],
                pooled["ci_high"],
                sign=first["sign"],
                null=null,
                margin=margin,
            )
        tests.append(
            {
                **{key: first[key] for key in ("experiment", "condition", "metric", "sign")},
                "value": pooled["value"],
                "ci_low": pooled["ci_low"],
                "ci_high": pooled["ci_high"],
                "null": null,
                "margin": margin,
                "verdict": verdict,
                "k": pooled["k"],
                "untestable": untestable,
                "missing": missing,
                "method": pooled["method"],
            }
        )
    notes = [
        f"{t['condition']} {t['metric']}: {t['method']} over {t['k']} task(s) "
        f"({t['untestable']} untestable, {t['missing']} missing or undefined left out)"
        for t in tests
    ]
    return {"verdict": combine([t["verdict"] for t in tests]), "tests": tests, "notes": notes}


def pool_seeds(per_seed: Sequence[Mapping], seeds: Sequence[int] | None = None) -> dict:
    """One task's claim verdict over prompt seeds, from each seed's verdict dict (same claim,
    same tests). Each statistic is the mean over the seeds that could test it, with the
    interval of :func:`grid_mean` (the mean of the seeds' bounds): the seeds' prompts share
    most of their queries, so their estimates are not independent, and this interval is
    the one that stays valid when they are perfectly correlated (it is never narrower than
    the seeds' typical interval). Each pooled statistic is judged again (:func:`judge`,
    the seeds' mean margin) and the claim's verdict combined (:func:`combine`); a statistic
    untestable in every seed stays untestable (the first seed's reason); one seed is
    returned as it is. A note that every seed shares is kept once; the others are prefixed
    with their seed (``seeds``, default 0, 1, ...), so each reading says which seed it is.

    Example::

        pool_seeds([claim_verdict(claim, r) for r in results.per_seed.values()],
                   seeds=results.seeds)["verdict"]

    Returns:
        The verdict dict of one seed's form, each test with ``"seeds"`` (how many seeds it
        was pooled over) and ``"seed_values"`` added; ``notes`` gain the per-seed verdicts.
    """
    per_seed = list(per_seed)
    seeds = list(range(len(per_seed))) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(per_seed):
        raise ValueError(
            f"pool_seeds got {len(seeds)} seed labels for {len(per_seed)} seeds; pass one "
            "label per seed's verdict."
        )
    if not per_seed:
        return {"verdict": UNCLEAR, "tests": [], "notes": ["no seed"]}
    if len(per_seed) == 1:
        return dict(per_seed[0])
    n_tests = {len(got["tests"]) for got in per_seed}
    if len(n_tests) != 1:
        raise ValueError(f"pool_seeds needs the same tests in every seed, got {sorted(n_tests)}.")
    tests = []
    for i in range(n_tests.pop()):
        rows = [got["tests"][i] for got in per_seed]
        usable = [
            t
            for t in rows
            if t.get("verdict") != UNTESTABLE
            and not t.get("missing")
            and all(math.isfinite(float(t[x])) for x in ("value", "ci_low", "ci_high"))
        ]
        test = dict(rows[0])
        test.update(seeds=len(usable), seed_values=[float(t["value"]) for t in usable])
        if not usable:
            tests.append(test)  # untestable, missing or undefined in every seed: as seed one
            continue
        for key in ("reason", "missing"):
            test.pop(key, None)
        value, low, high = grid_mean(
            [t["value"] for t in usable], [t["ci_low"] for t in usable],
            [t["ci_high"] for t in usable],
        )  # fmt: skip
        margins = [float(t["margin"]) for t in usable if t.get("margin") is not None]
        margins = [m for m in margins if math.isfinite(m)]
        margin = float(np.mean(margins)) if margins else math.nan
        null = float(usable[0]["null"])
        verdict = judge(value, low, high, sign=test["sign"], null=null, margin=margin)
        test.update(value=value, ci_low=low, ci_high=high, margin=margin, verdict=verdict)
        tests.append(test)
    votes = [got["verdict"] for got in per_seed]
    counts = ", ".join(f"{v} {votes.count(v)}/{len(votes)}" for v in VERDICTS if v in votes)
    notes = [f"pooled over {len(per_seed)} prompt seeds (per seed: {counts})"]
    notes += _seed_notes(per_seed, seeds)
    out = {key: value for key, value in per_seed[0].items() if key not in ("tests", "notes")}
    return out | {"verdict": combine([t["verdict"] for t in tests]), "tests": tests,
                  "notes": notes}  # fmt: skip


def _seed_notes(per_seed: Sequence[Mapping], seeds: Sequence[int]) -> list[str]:
    """Each seed's notes in order: a note every seed shares once, the others as
    ``"seed <s>: <note>"``."""
    shared = set.intersection(*(set(got.get("notes", [])) for got in per_seed))
    notes = [n for n in per_seed[0].get("notes", []) if n in shared]
    for seed, got in zip(seeds, per_seed, strict=True):
        notes += [f"seed {seed}: {n}" for n in got.get("notes", []) if n not in shared]
    return list(dict.fromkeys(notes))


def _check_vocabulary(verdicts: Sequence[str]) -> None:
    for v in verdicts:
        if v not in VERDICTS:
            raise ValueError(f"Unknown verdict {v!r}; verdicts are one of {list(VERDICTS)}.")


__all__ = [
    "CORRELATION_MARGIN",
    "DOES_NOT_HOLD",
    "HOLDS",
    "LAYER_MARGIN",
    "NO_LARGER_EFFECT",
    "OVERLAP_MARGIN",
    "RATE_MARGIN",
    "RATE_METRICS",
    "RELATIVE_MARGIN",
    "UNCLEAR",
    "UNTESTABLE",
    "VERDICTS",
    "combine",
    "floor_or_ceiling",
    "grid_mean",
    "is_no_op",
    "judge",
    "margin_for",
    "noise_corrected_stability",
    "pool_claim",
    "pool_estimates",
    "pool_seeds",
    "pool_verdicts",
    "rescale_interval",
    "spearman_brown",
    "verdict_text",
    "worst_case_sum",
]
