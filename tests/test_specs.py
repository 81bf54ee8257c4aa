"""Interventions as data: every intervention writes a JSON-able spec and from_spec rebuilds
one that gives identical logits; bad specs are refused naming the bad field."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from icl_heads.activations import collect
from icl_heads.hooks import Capture
from icl_heads.interventions import (
    ablate,
    ablate_layers,
    compose,
    from_spec,
    inject_task_vector,
    patch,
    steer,
)
from icl_heads.prompts import shift_demo_labels
from icl_heads.settings import intervention_specs


def _logits(model, prompts, iv):
    return collect(model, prompts, interventions=[iv], batch_size=4, progress=False).logits


def _json(spec):
    return json.loads(json.dumps(spec))


def _replays(model, target, iv, *, max_inline=1024, **kwargs):
    """from_spec(JSON round trip of iv.to_spec()) gives identical logits on ``target`` and
    writes the same spec again."""
    spec = _json(iv.to_spec(max_inline=max_inline))
    again = from_spec(model, spec, **kwargs)
    assert torch.equal(_logits(model, target, iv), _logits(model, target, again))
    assert again.to_spec(max_inline=max_inline) == spec
    return spec


@pytest.fixture(scope="module")
def reference(tiny_prompts):
    return tiny_prompts.select(list(range(6)))


@pytest.mark.parametrize("positions", ["all", "query", [-1, -2]])
def test_zero_mean_and_resample_head_ablations_replay_from_json(
    tiny_llama, tiny_prompts, reference, positions
):
    heads = [(0, 1), (1, 3)]
    zero = ablate(tiny_llama, heads, "zero", positions, progress=False)
    spec = _replays(tiny_llama, tiny_prompts, zero)
    assert spec["kind"] == "ablate" and spec["heads"] == [[0, 1], [1, 3]]
    mean = ablate(
        tiny_llama, heads, "mean", positions, reference=reference, batch_size=4, progress=False
    )
    spec = _replays(tiny_llama, tiny_prompts, mean)  # means inlined (2*4*8 numbers)
    assert "values" in spec["means"] and spec["means"]["prompts"]["n"] == 6
    # not inlined: recomputed from the reference prompts, or taken from tensors=
    _replays(tiny_llama, tiny_prompts, mean, max_inline=0, prompts=[tiny_prompts, reference])
    _replays(tiny_llama, tiny_prompts, mean, max_inline=0, tensors=[mean.means])
    resample = ablate(
        tiny_llama,
        heads,
        "resample",
        positions,
        reference=reference,
        seed=3,
        batch_size=4,
        progress=False,
    )
    spec = _replays(tiny_llama, tiny_prompts, resample, prompts=reference)
    assert spec["seed"] == 3 and spec["reference"]["batch_size"] == 4


def test_layer_ablations_replay_from_json(tiny_llama, tiny_prompts, reference):
    for mode in ("zero", "mean", "resample"):
        iv = ablate_layers(
            tiny_llama, [1], mode, "query", site="mlp_out", reference=reference, progress=False
        )
        spec = _replays(tiny_llama, tiny_prompts, iv, prompts=[reference])
        assert spec["site"] == "mlp_out" and spec["layers"] == [1] and "heads" not in spec


def test_mean_ablation_from_a_bare_tensor_needs_the_tensor_unless_inlined(tiny_llama, tiny_prompts):
    means = torch.randn(2, 4, 8)
    iv = ablate(tiny_llama, [(0, 2)], "mean", means=means)
    _replays(tiny_llama, tiny_prompts, iv)
    _replays(tiny_llama, tiny_prompts, iv, max_inline=0, tensors=means)
    with pytest.raises(ValueError, match="'means'.*tensors="):
        from_spec(tiny_llama, _json(iv.to_spec(max_inline=0)))


def test_patches_replay_from_json(tiny_llama, tiny_prompts):
    corrupted = shift_demo_labels(tiny_prompts)
    heads = patch(tiny_llama, tiny_prompts, heads=[(1, 0), (1, 2)], batch_size=3, progress=False)
    spec = _replays(tiny_llama, corrupted, heads, prompts=[corrupted, tiny_prompts])
    assert spec["source"]["prompts"]["perturbation"] == tiny_prompts.info().perturbation
    resid = patch(
        tiny_llama, tiny_prompts, site="resid_pre", layers=[1], positions="query", progress=False
    )
    _replays(tiny_llama, corrupted, resid, prompts=tiny_prompts)
    with pytest.raises(ValueError, match="'source'.*prompts="):
        from_spec(tiny_llama, _json(resid.to_spec()), prompts=[corrupted])


def test_steering_replays_from_json_inline_or_with_the_vector(tiny_llama, tiny_prompts):
    cfg = tiny_llama.cfg
    g = torch.Generator().manual_seed(1)
    v_model, v_head = torch.randn(cfg.d_model, generator=g), torch.randn(cfg.d_head, generator=g)
    for iv in (
        steer(tiny_llama, v_model, 1, alpha=2.5),
        steer(tiny_llama, v_model, head=(0, 3), alpha=-1.0, positions="all"),
        steer(tiny_llama, v_head, head=(1, 2), positions=[-1, -3]),
        steer(tiny_llama, v_model, 0, site="resid_post"),
    ):
        spec = _replays(tiny_llama, tiny_prompts, iv)
        assert spec["kind"] == "steer" and len(spec["vector"]["values"]) == iv.vector.numel()
        spec = _replays(tiny_llama, tiny_prompts, iv, max_inline=0, tensors=[v_head, v_model])
        assert "values" not in spec["vector"]
    with pytest.raises(ValueError, match="'vector'.*tensors="):
        from_spec(tiny_llama, spec, tensors=[v_model + 1])


def test_task_vectors_replay_from_json(tiny_llama, tiny_prompts):
    v = torch.randn(tiny_llama.cfg.d_model)
    for iv in (
        inject_task_vector(tiny_llama, v, 1),
        inject_task_vector(tiny_llama, v, 2, mode="add", scale=0.5, positions="all"),
    ):
        spec = _replays(tiny_llama, tiny_prompts, iv)
        assert spec["kind"] == "task_vector"
        _replays(tiny_llama, tiny_prompts, iv, max_inline=0, tensors=v)


def test_composed_interventions_replay_from_json(tiny_llama, tiny_prompts, reference):
    v = torch.randn(tiny_llama.cfg.d_model)
    iv = compose(
        ablate(tiny_llama, [(0, 0)], "mean", "query", reference=reference, progress=False),
        ablate(tiny_llama, [(1, 1)], "resample", reference=reference, progress=False),
        steer(tiny_llama, v, 1, alpha=0.5),
    )
    spec = _replays(tiny_llama, tiny_prompts, iv, max_inline=0, prompts=[reference], tensors=[v])
    assert [p["kind"] for p in spec["parts"]] == ["ablate", "ablate", "steer"]


def test_intervention_specs_for_settings_are_json_and_mark_what_cannot_be_rebuilt(tiny_llama):
    iv = ablate(tiny_llama, [(0, 1)])
    specs = intervention_specs([iv, Capture()])
    assert json.loads(json.dumps(specs)) == [
        iv.to_spec(),
        {"kind": "opaque", "description": "capture"},
    ]
    with pytest.raises(ValueError, match="'kind'.*cannot be rebuilt"):
        from_spec(tiny_llama, specs[1])


def test_recomputed_means_that_differ_from_the_record_are_logged(
    tiny_llama, tiny_prompts, reference, caplog
):
    iv = ablate(tiny_llama, [(0, 1)], "mean", reference=reference, progress=False)
    spec = _json(iv.to_spec(max_inline=0))
    spec["means"]["sha256"] = "0" * 16
    with caplog.at_level(logging.WARNING):
        from_spec(tiny_llama, spec, prompts=reference)
    assert "not bit-exact" in caplog.text


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("kind", "ablation", "'kind'"),
        ("mode", "half", "'mode'"),
        ("site", "q", "'site'"),
        ("heads", [[0, 9]], "'heads'"),
        ("heads", ["L0H1"], "'heads'"),
        ("positions", "last", "'positions'"),
        ("positions", [], "'positions'"),
        ("seed", 1.5, "'seed'"),
        ("model", "gpt2", "'model'"),
        ("extra", 1, "'extra'"),
        ("layers", [0], "'layers'"),
    ],
)
def test_bad_specs_raise_a_value_error_naming_the_field(tiny_llama, field, value, match):
    spec = _json(ablate(tiny_llama, [(0, 1)]).to_spec())
    spec[field] = value
    with pytest.raises(ValueError, match=match):
        from_spec(tiny_llama, spec)


def test_bad_nested_spec_fields_are_named(tiny_llama, reference):
    spec = _json(
        ablate(tiny_llama, [(0, 1)], "mean", reference=reference, progress=False).to_spec()
    )
    spec["means"]["values"][0][0][0] += 1.0
    with pytest.raises(ValueError, match="'means.values'"):
        from_spec(tiny_llama, spec)
    spec = _json(steer(tiny_llama, torch.ones(tiny_llama.cfg.d_model), 0).to_spec())
    spec["alpha"] = "big"
    with pytest.raises(ValueError, match="'alpha'"):
        from_spec(tiny_llama, spec)
    spec = _json(steer(tiny_llama, torch.ones(tiny_llama.cfg.d_model), 0).to_spec())
    for name, value in (("layer", 7), ("alpha", float("inf")), ("head", 1)):
        with pytest.raises(ValueError, match=f"'{name}'"):
            from_spec(tiny_llama, {**spec, name: value})
    del spec["vector"]
    with pytest.raises(ValueError, match="'vector'.*missing"):
        from_spec(tiny_llama, spec)
    spec = _json(inject_task_vector(tiny_llama, torch.ones(tiny_llama.cfg.d_model), 0).to_spec())
    with pytest.raises(ValueError, match="'layer'"):
        from_spec(tiny_llama, {**spec, "layer": tiny_llama.cfg.n_layers + 1})
    assert from_spec(tiny_llama, {**spec, "layer": tiny_llama.cfg.n_layers}).layer == 2
    with pytest.raises(ValueError, match="'parts'"):
        from_spec(tiny_llama, {"kind": "compose", "parts": []})
    with pytest.raises(ValueError, match="'kind'"):
        from_spec(tiny_llama, ["ablate"])
