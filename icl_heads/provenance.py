"""Checks of where objects came from, where two of them meet.

Every :class:`~icl_heads.prompt_set.PromptSet` records what it is
(:meth:`~icl_heads.prompt_set.PromptSet.info`: task name, digest and source, k, n, seed,
perturbation, model, tokenizer, a digest of its tokens and gold labels); every
:class:`~icl_heads.heads.HeadScores` and result records its settings (the model and, for
maps scored on prompts, that ``PromptInfo``); :class:`~icl_heads.activations.ActivationMeans`
records its model, site, positions and prompts. The functions here compare these records
where an analysis combines two objects, and raise a ``ValueError`` naming both origins and
the fix.

What "belongs together" means (the rule every check applies):

* **Unknown is not a mismatch.** A field that is ``None`` on either side (a map built by
  hand, a result saved before digests were recorded, a tensor instead of a record) is not
  compared. Shapes are always compared.
* **Model.** A map, means or head set made with a model is used with a model of the same
  ``[n_layers, n_heads]`` shape and, when both names are known, the same
  ``cfg.model_name``. (Prompts need the same tokenizer: :func:`~icl_heads.prompt_set.check_prompt_set`.)
* **Same task** (:func:`same_task`): equal task digests (the task's examples, labels and
  template, :attr:`~icl_heads.tasks.Task.digest`) when both are known, else equal task
  names.
* **Same prompts** (:func:`same_prompts`): equal recipes (``PromptInfo ==``: task, k, n,
  seed, perturbation, model, tokenizer) and, when both are known, equal task and prompt
  digests.
* **Maps** come in three kinds (:func:`map_origin`):

  - *task-specific*: scored on prompts (TR/TL from ``tsla_scores``, DLA, sweeps and
    patching effects, label-attention maps): used only on prompts of the **same task** and
    with the same model. Where an analysis pairs the map's per-prompt values with the
    prompts' (reconciliation's paired overlap) or the documented contract is "maps of
    these prompts", the **same prompts**;
  - *task-independent*: detector maps on random repeated tokens or a user's token batch
    (previous-token, induction, duplicate-token heads): only the model must match;
  - *unknown* (no settings): only the shape is checked.

* **Head sets.** Plain lists of heads carry no origin: passing ``{"TR": tr.top()}`` is how
  to use heads of one task (or model of the same shape) on another deliberately. Head sets
  from :func:`~icl_heads.experiments.trtl.head_sets` of a ``find_task_heads`` result are a
  :class:`TracedHeadSets` and are checked like the task-specific maps they came from.
* **Source and target prompts** (steering, task vectors): the same task and tokenizer; the
  source has demonstrations; a task vector's target is zero-shot (``k == 0``) and shares
  the source's label tokens.
* **Mean-ablation means**: the model's name and shape, the ablated site and positions; from
  ``reference`` when one is given, else from prompts of the same task as the prompts run.
* **Gold results reused** (``perturbation_experiment(gold=...)``): the same prompts.

Example::

    from icl_heads import provenance
    provenance.check_map(tr, model, prompts, fn="ablation_experiment", what="heads['TR']")
    provenance.same_task(a.info(), b.info())
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .activations import ActivationMeans
from .backends import HookedTransformer
from .heads import HeadScores
from .prompt_set import PromptSet
from .settings import PromptInfo, Settings, model_name
from .tasks import Task

#: How closely a map must match the prompts it is used with (see the module docstring).
Need = Literal["model", "task", "prompts"]


# =========================================================================== identities


def describe_prompts(info: PromptInfo | None) -> str:
    """One line naming a prompt set's origin, for error messages.

    Example::

        describe_prompts(prompts.info())
        # "task 'sentiment' (digest 5b1f..., builtin:sentiment.jsonl), k=4, n=64, seed=0,
        #  gold, model 'smollm2-135m-instruct'"
    """
    if info is None:
        return "prompts of unknown origin"
    extra = [f"digest {info.task_digest}"] if info.task_digest else []
    if info.task_source:
        extra.append(info.task_source)
    task = f"task {info.task!r}" + (f" ({', '.join(extra)})" if extra else "")
    model = f", model {info.model!r}" if info.model else ""
    return f"{task}, k={info.k}, n={info.n}, seed={info.seed}, {info.perturbation}{model}"


def same_task(a: PromptInfo, b: PromptInfo) -> bool:
    """Whether two prompt sets are of the same task: equal task digests when both are
    known, else equal task names.

    Example::

        same_task(icl.info(), zero_shot.info())        # True for one task's prompts
    """
    if a.task_digest is not None and b.task_digest is not None:
        return a.task_digest == b.task_digest
    return a.task == b.task


def same_prompts(a: PromptInfo, b: PromptInfo) -> bool:
    """Whether two infos name the same prompts: equal recipes (``a == b``) and, when both
    are known, equal task and prompt digests (``None`` is unknown, so a result saved before
    digests were recorded still matches its prompts rebuilt today).

    Example::

        same_prompts(result.settings.prompts, prompts.info())
    """
    if a != b:
        return False
    for field in ("task_digest", "prompts_digest"):
        x, y = getattr(a, field), getattr(b, field)
        if x is not None and y is not None and x != y:
            return False
    return True


def _model_label(name: str | None, shape: tuple[int, int] | None) -> str:
    parts = [f"model {name!r}" if name else "an unnamed model"]
    if shape is not None:
        parts.append(f"[{shape[0]} layers, {shape[1]} heads]")
    return " ".join(parts)


def check_model_match(
    model: HookedTransformer,
    recorded: str | None,
    shape: tuple[int, int] | None,
    *,
    fn: str,
    what: str,
    fix: str,
) -> None:
    """``ValueError`` unless an object recorded as made with model ``recorded`` (shape
    ``shape`` ``[n_layers, n_heads]``; either ``None`` if unknown) fits ``model``.

    Example::

        check_model_match(model, tr.settings.model, tuple(tr.scores.shape), fn="f",
                          what="tr=", fix="score it with this model")
    """
    here = (model.cfg.n_layers, model.cfg.n_heads)
    name = model_name(model)
    if shape is not None and tuple(shape) != here:
        raise ValueError(
            f"{fn}: {what} was made with {_model_label(recorded, tuple(shape))}, but the model "
            f"here is {_model_label(name, here)}; its heads would be read on another model. "
            f"{fix}"
        )
    if recorded is not None and name is not None and recorded != name:
        raise ValueError(
            f"{fn}: {what} was made with model {recorded!r}, but the model here is {name!r}. {fix}"
        )


# =========================================================================== maps


@dataclass(frozen=True)
class MapOrigin:
    """Where a :class:`~icl_heads.heads.HeadScores` came from (:func:`map_origin`).

    Attributes:
        kind: ``"task"`` (scored on prompts), ``"model"`` (detector maps on random or given
            tokens: task-independent) or ``"unknown"`` (no settings).
        model: the name of the model that made it, if recorded.
        prompts: the prompts it was scored on (``kind == "task"``).
    """

    kind: Literal["task", "model", "unknown"]
    model: str | None = None
    prompts: PromptInfo | None = None


def map_origin(scores: HeadScores) -> MapOrigin:
    """The origin of a map, read from its settings (see the module docstring for the
    kinds).

    Example::

        map_origin(tr).kind                   # 'task'
        map_origin(detected["induction"]).kind  # 'model'
    """
    settings = scores.settings
    if settings is None:
        return MapOrigin("unknown")
    if isinstance(settings, PromptInfo):
        return MapOrigin("task", settings.model, settings)
    model = getattr(settings, "model", None)
    model = model if isinstance(model, str) else None
    prompts = getattr(settings, "prompts", None)
    sequences = getattr(settings, "sequences", None)
    if isinstance(prompts, PromptInfo) and sequences in (None, "prompts"):
        return MapOrigin("task", model or prompts.model, prompts)
    return MapOrigin("model", model)


def check_map(
    scores: object,
    model: HookedTransformer,
    prompts: PromptSet | None = None,
    *,
    fn: str,
    what: str,
    need: Need = "task",
) -> None:
    """``ValueError`` unless the map ``scores`` belongs with ``model`` (and ``prompts``):
    same shape and model name; for a task-specific map, the same task (``need="task"``) or
    the same prompts (``need="prompts"``, also the same number of per-prompt rows).
    Anything that is not a ``HeadScores`` passes (other checks handle it).

    Example::

        check_map(tr, model, prompts, fn="ablation_experiment", what="heads['TR']")
    """
    if not isinstance(scores, HeadScores):
        return
    origin = map_origin(scores)
    fix = (
        "Score the map with this model (e.g. tsla_scores(model, prompts) or "
        "token_detector_scores(model)), or pass explicit heads to use these on purpose."
    )
    check_model_match(
        model, origin.model, tuple(scores.scores.shape), fn=fn, what=f"{what} (a map)", fix=fix
    )
    if prompts is None or need == "model" or origin.kind != "task" or origin.prompts is None:
        return
    here = prompts.info()
    if not same_task(origin.prompts, here):
        raise ValueError(
            f"{fn}: {what} is a map scored on {describe_prompts(origin.prompts)}, but the "
            f"prompts here are {describe_prompts(here)}. A map scored on prompts is "
            "task-specific: score it on prompts of this task (e.g. tsla_scores(model, "
            "prompts)), or pass its heads explicitly ({name: map.top()}) to use them on "
            "another task on purpose."
        )
    if need == "prompts":
        rows = scores.per_prompt.shape[0] if scores.per_prompt is not None else None
        if not same_prompts(origin.prompts, here) or (rows is not None and rows != len(prompts)):
            raise ValueError(
                f"{fn}: {what} must be scored on these prompts, but it was scored on "
                f"{describe_prompts(origin.prompts)}"
                + (f" ({rows} per-prompt rows)" if rows is not None else "")
                + f" and the prompts here are {describe_prompts(here)}. Pass the map of "
                "these prompts (tsla_scores(model, prompts)), or leave it out to compute it."
            )


# =========================================================================== head sets


class TracedHeadSets(dict):
    """Named head sets ``{name: [Head, ...]}`` that remember where they were found: a
    ``dict`` (use it wherever head sets go) with the prompts and model of the result they
    came from (:func:`~icl_heads.experiments.trtl.head_sets` of a ``find_task_heads``
    result). :func:`check_head_sets` refuses them on prompts of another task or another
    model; copy them into a plain dict (``dict(sets)``) to use them there on purpose.

    Example::

        sets = TracedHeadSets({"TR": [Head(3, 1)]}, prompts=prompts.info(), model="m",
                              shape=(12, 9), source="find_task_heads")
        sets.prompts.task                     # the task they were found on
    """

    def __init__(
        self,
        sets: Mapping[str, list],
        *,
        prompts: PromptInfo | None,
        model: str | None,
        shape: tuple[int, int] | None = None,
        source: str = "a result",
    ):
        super().__init__(sets)
        self.prompts = prompts
        self.model = model
        self.shape = shape
        self.source = source

    def __repr__(self) -> str:
        task = self.prompts.task if self.prompts is not None else None
        return f"TracedHeadSets({dict.__repr__(self)}, task={task!r}, model={self.model!r})"


def check_head_sets(
    heads: object, model: HookedTransformer, prompts: PromptSet, *, fn: str, what: str = "heads"
) -> None:
    """``ValueError`` unless the named head sets ``heads`` belong with ``model`` and
    ``prompts``: every ``HeadScores`` value passes :func:`check_map` (same model; a
    task-specific map of the same task) and :class:`TracedHeadSets` came from this model and
    this task. Plain head lists pass (they carry no origin). Not a mapping: passes (the
    head-set checks give the type error).

    Example::

        check_head_sets(trtl.head_sets(found), model, prompts, fn="ablation_experiment")
    """
    if not isinstance(heads, Mapping):
        return
    if isinstance(heads, TracedHeadSets):
        where = f"{what} (the head sets of {heads.source})"
        fix = "Find the heads with this model, or pass dict(sets) to use them on purpose."
        check_model_match(model, heads.model, heads.shape, fn=fn, what=where, fix=fix)
        if heads.prompts is not None and not same_task(heads.prompts, prompts.info()):
            raise ValueError(
                f"{fn}: {where} were found on {describe_prompts(heads.prompts)}, but the "
                f"prompts here are {describe_prompts(prompts.info())}. TR/TL heads are "
                "task-specific: find them on prompts of this task (trtl.find_task_heads("
                "model, prompts)), or pass dict(sets) to use them on another task on purpose."
            )
    for name, value in heads.items():
        check_map(value, model, prompts, fn=fn, what=f"{what}[{name!r}]", need="task")


def heads_origin(heads: object) -> PromptInfo | None:
    """The prompts named head sets were found on, where they record it: those of a
    :class:`TracedHeadSets`, or of the maps given as every value (when they agree); ``None``
    for head lists given by hand (settings record it as ``heads_from``).

    Example::

        heads_origin(trtl.head_sets(found)) == found.settings.prompts     # True
    """
    if isinstance(heads, TracedHeadSets):
        return heads.prompts
    if not isinstance(heads, Mapping) or not heads:
        return None
    origins = [map_origin(v).prompts if isinstance(v, HeadScores) else None for v in heads.values()]
    first = origins[0]
    if first is None or any(o is None or not same_prompts(o, first) for o in origins):
        return None
    return first


# =========================================================================== pairs


def check_same_task(
    a: PromptSet, b: PromptSet, *, fn: str, a_name: str, b_name: str, fix: str
) -> None:
    """``ValueError`` unless prompt sets ``a`` and ``b`` are of the same task
    (:func:`same_task`).

    Example::

        check_same_task(source, target, fn="steering_experiment", a_name="source_prompts",
                        b_name="target_prompts", fix="build both from one task")
    """
    ia, ib = a.info(), b.info()
    if not same_task(ia, ib):
        raise ValueError(
            f"{fn}: {a_name} are {describe_prompts(ia)} but {b_name} are "
            f"{describe_prompts(ib)}; they must be of the same task. {fix}"
        )


def check_task_vector_pair(source: PromptSet, target: PromptSet, *, fn: str) -> None:
    """``ValueError`` unless ``source`` are ICL prompts (``k >= 1``, not zero-shot) and
    ``target`` zero-shot prompts (``k == 0``) of the same task: a swapped pair would make
    the "task vector" a mean zero-shot state.

    Example::

        check_task_vector_pair(icl, zero_shot, fn="task_vector_experiment")
    """
    fix = (
        "Pass the ICL prompts first and the zero-shot prompts second, e.g. "
        "task_vector_experiment(model, build_prompts(model, task, k=4, n=64), "
        "build_prompts(model, task, k=0, n=64))."
    )
    if source.k == 0 or source.perturbation == "zero_shot":
        swapped = " (the two sets look swapped)" if target.k > 0 else ""
        raise ValueError(
            f"{fn}: source_prompts have no demonstrations (k={source.k}, perturbation="
            f"{source.perturbation!r}): the task vector would be a mean zero-shot state"
            f"{swapped}. {fix}"
        )
    if target.k != 0:
        raise ValueError(
            f"{fn}: target_prompts have k={target.k} demonstrations, but the task vector is "
            f"injected into zero-shot prompts (k=0). {fix}"
        )
    check_same_task(
        source,
        target,
        fn=fn,
        a_name="source_prompts",
        b_name="target_prompts",
        fix="Build both from the same task.",
    )


def check_task_of(task: Task, prompts: PromptSet, *, fn: str) -> None:
    """``ValueError`` unless ``prompts`` were built from ``task`` (same digest when the
    prompts record one, else the same name).

    Example::

        check_task_of(task, prompts, fn="perturbation_experiment")
    """
    if prompts.task_digest is not None:
        ok = prompts.task_digest == task.digest
    else:
        ok = prompts.task_name == task.name
    if not ok:
        raise ValueError(
            f"{fn}: the prompts were built from {describe_prompts(prompts.info())}, not from "
            f"the given task {task.name!r} (digest {task.digest}"
            + (f", {task.source}" if task.source else "")
            + "); pass the Task the prompts were built from (task=...)."
        )


def check_means(
    means: object,
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    positions: object,
    reference: PromptSet | None = None,
    fn: str,
) -> None:
    """``ValueError`` unless precomputed mean-ablation ``means`` belong with this run: made
    with this model (name; shape checked by ``ablate``), taken at the ablated ``positions``,
    and over ``reference`` when one is given (same prompts), else over prompts of the same
    task as ``prompts``. A bare tensor carries no record and passes (``ablate`` checks its
    shape).

    Example::

        check_means(means, model, prompts, positions="all", fn="ablation_experiment")
    """
    if not isinstance(means, ActivationMeans):
        return
    fix = "Compute them with activation_means(model, reference, 'z', positions=...)."
    check_model_match(model, means.model, None, fn=fn, what="means=", fix=fix)
    if means.positions != positions:
        raise ValueError(
            f"{fn}: means= were taken at positions={means.positions!r}, but the ablation is at "
            f"positions={positions!r}; compute them at the ablated positions "
            f"(activation_means(model, prompts, 'z', positions={positions!r}))."
        )
    if means.prompts is None:
        return
    if reference is not None:
        if not same_prompts(means.prompts, reference.info()):
            raise ValueError(
                f"{fn}: means= were computed over {describe_prompts(means.prompts)}, but "
                f"reference= is {describe_prompts(reference.info())}; pass one of the two "
                "(or the means of the reference)."
            )
        return
    if not same_task(means.prompts, prompts.info()):
        raise ValueError(
            f"{fn}: means= were computed over {describe_prompts(means.prompts)}, but the "
            f"prompts here are {describe_prompts(prompts.info())}. Compute the means over "
            "prompts of this task, or pass reference=<those prompts> with them to ablate "
            "towards another task's means on purpose."
        )


def check_reused_result(
    recorded: object, prompts: PromptSet, *, fn: str, what: str, fix: str
) -> None:
    """``ValueError`` unless a reused result's recorded prompts (a ``PromptInfo``) are
    ``prompts`` (:func:`same_prompts`).

    Example::

        check_reused_result(found.settings.prompts, prompts, fn="perturbation_experiment",
                            what="gold", fix="pass gold=None")
    """
    here = prompts.info()
    if not isinstance(recorded, PromptInfo) or not same_prompts(recorded, here):
        shown = describe_prompts(recorded) if isinstance(recorded, PromptInfo) else "unrecorded"
        raise ValueError(
            f"{fn}: {what} was made on {shown}, but the prompts here are "
            f"{describe_prompts(here)}. {fix}"
        )


def settings_prompts(settings: Settings | None) -> PromptInfo | None:
    """The prompts a result's settings record (``prompts``, else ``source``), if any.

    Example::

        settings_prompts(found.settings).task        # 'sentiment'
    """
    for name in ("prompts", "source"):
        value = getattr(settings, name, None)
        if isinstance(value, PromptInfo):
            return value
    return None


__all__ = [
    "MapOrigin",
    "TracedHeadSets",
    "check_head_sets",
    "check_map",
    "check_means",
    "check_model_match",
    "check_reused_result",
    "check_same_task",
    "check_task_of",
    "check_task_vector_pair",
    "describe_prompts",
    "heads_origin",
    "map_origin",
    "same_prompts",
    "same_task",
    "settings_prompts",
]
