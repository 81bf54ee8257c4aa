"""Hook building blocks: names, positions, the one Intervention base, Capture, applied; and
the import floors (hooks below activations below interventions, no circle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import icl_heads
from icl_heads import activations, hooks, interventions
from icl_heads.hooks import (
    Capture,
    Intervention,
    applied,
    check_interventions,
    check_positions,
    hook_name,
    layers_to_mask,
    position_mask,
    state_injection_hook,
)

PACKAGE = Path(icl_heads.__file__).parent


def test_hook_names_follow_transformer_lens():
    assert hook_name("z", 3) == "blocks.3.attn.hook_z"
    assert hook_name("resid_post", 0) == "blocks.0.hook_resid_post"
    with pytest.raises(ValueError, match="Unknown site 'q'"):
        hook_name("q", 0)
    assert state_injection_hook(0, 4) == "blocks.0.hook_resid_pre"
    assert state_injection_hook(4, 4) == "blocks.3.hook_resid_post"
    with pytest.raises(ValueError, match="out of range"):
        state_injection_hook(5, 4)


def test_positions_are_checked_and_masked():
    assert check_positions("query") == "query" and check_positions(2) == (2,)
    assert check_positions(torch.tensor([1, -1])) == (1, -1)
    for bad, err in (("last", ValueError), ([], ValueError), ([1.0], TypeError), (True, TypeError)):
        with pytest.raises(err):
            check_positions(bad)
    assert position_mask("query", 3).tolist() == [False, False, True]
    assert position_mask("all", 2).tolist() == [True, True]
    assert position_mask((0, -1), 4).tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="out of range"):
        position_mask((4,), 4)


def test_layer_selections_become_masks():
    assert layers_to_mask(None, 3).all()
    assert layers_to_mask(1, 3).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="out of range"):
        layers_to_mask([3], 3)
    with pytest.raises(TypeError):
        layers_to_mask("0", 3)


def test_one_intervention_base_for_every_intervention(tiny_llama):
    iv = interventions.ablate(tiny_llama, [(0, 1)])
    assert isinstance(iv, Intervention) and isinstance(Capture(), Intervention)
    assert activations.Intervention is Intervention is interventions.Intervention
    assert check_interventions(iv, tiny_llama) == (iv,)
    with pytest.raises(TypeError, match="no fwd_hooks"):
        check_interventions([object()])
    assert Capture().to_spec() == {"kind": "opaque", "description": "capture"}


def test_capture_and_applied_record_a_forward_pass(tiny_llama, tiny_prompts):
    batch = tiny_prompts.select([0, 1])
    rec = Capture(names={"blocks.0.attn.hook_z"}.__contains__, positions="query")
    with torch.inference_mode(), applied(tiny_llama, [rec], batch, torch.arange(2)):
        tiny_llama(batch.tokens, attention_mask=batch.attention_mask)
    got = rec.store["blocks.0.attn.hook_z"]
    assert got.shape == (2, tiny_llama.cfg.n_heads, tiny_llama.cfg.d_head)
    assert not tiny_llama.blocks[0].attn.hook_z.fwd_hooks  # removed after the block


def _imports(module: str) -> set[str]:
    """Top-level package modules imported anywhere in ``icl_heads/<module>.py`` or, for a
    subpackage, in any file of ``icl_heads/<module>/`` (also inside functions and under
    TYPE_CHECKING), relative imports resolved; imports within the subpackage are left out."""
    path = PACKAGE / module
    files = sorted(path.rglob("*.py")) if path.is_dir() else [PACKAGE / f"{module}.py"]
    out = set()
    for file in files:
        depth = len(file.relative_to(PACKAGE).parts) - 1  # 0 for icl_heads/x.py
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = node.module or ""
                if node.level:
                    if node.level <= depth:
                        continue  # a sibling inside the subpackage
                    out.add(name.split(".")[0] if name else "")
                    out.update(a.name for a in node.names if not name)
                elif name.startswith("icl_heads."):
                    out.add(name.split(".")[1])
            elif isinstance(node, ast.Import):
                out.update(
                    a.name.split(".")[1] for a in node.names if a.name.startswith("icl_heads.")
                )
    return out


def test_the_floors_import_downwards_only():
    assert _imports("hooks") <= {"prompts"}  # annotations only
    assert "interventions" not in _imports("activations")
    assert "interventions" not in _imports("hooks") and "activations" not in _imports("hooks")
    assert {"hooks", "activations"} <= _imports("interventions")


def test_moved_names_stay_importable_from_their_old_modules():
    for name in (
        "HookList",
        "Positions",
        "SITES",
        "LAYER_SITES",
        "hook_name",
        "check_positions",
        "position_mask",
        "layers_to_mask",
        "check_interventions",
        "Intervention",
        "Capture",
        "applied",
        "state_injection_hook",
    ):
        assert getattr(interventions, name) is getattr(hooks, name)
    assert interventions.activation_means is activations.activation_means
    assert interventions.ActivationMeans is activations.ActivationMeans


def test_the_split_packages_keep_every_public_name_of_the_old_modules():
    """interventions, geometry and detectors became packages of rooms; every public name of
    the old single modules is still importable from the package."""
    from icl_heads import detectors, geometry

    old = {
        interventions: "ABLATION_MODES TASK_VECTOR_MODES Replacement Ablation ablate "
        "ablate_layers Patch patch Steer steer Compose compose RowEdit TaskVector "
        "inject_task_vector from_spec",
        geometry: "ONSET_FRACTION SPECTRAL_BOOT SEPARABILITY_METRICS ALIGNMENT_METRICS "
        "state_hook_names check_state_layers query_states run_query "
        "normalized_states subspace_alignment label_rotation GeometryCurves "
        "SeparabilitySettings AlignmentSettings resample_counts bootstrap_weights "
        "weighted_means class_codes separability_curves "
        "alignment_curves separability alignment onset_layers task_vector "
        "inject_task_vector TaskVector",
        detectors: "DETECTORS Normalize NORMALIZATIONS DEFAULT_THRESHOLDS KINDS Sequences "
        "DetectorSettings random_repeated_tokens detection_patterns score_patterns "
        "token_detector_scores previous_token_scores duplicate_token_scores "
        "induction_scores LabelAttention label_attention_scores detect_heads",
    }
    for package, names in old.items():
        for name in names.split():
            assert hasattr(package, name), f"{package.__name__}.{name}"
            assert name in package.__all__, f"{package.__name__}.__all__ lacks {name}"
    assert callable(geometry.separability) and callable(geometry.alignment)  # not submodules
    assert callable(interventions.compose)


def test_each_intervention_builds_its_hooks_once_per_run(tiny_llama, tiny_prompts):
    """The check for hooks after the last block reads the hooks the run adds: an
    intervention's ``fwd_hooks`` is called once per batch of a collect and once per clean
    run, not once more for the check (the built-in interventions only build closures there;
    a user's may do real work)."""
    from icl_heads.hooks import intervention_hooks
    from icl_heads.last_token import clean_run

    class Counting:
        calls = 0

        def fwd_hooks(self, batch, index):
            self.calls += 1
            return [("blocks.0.hook_resid_post", lambda act, hook: act)]

    iv = Counting()
    hooks = intervention_hooks([iv], tiny_prompts, None, tiny_llama.cfg.n_layers)
    assert [name for name, _ in hooks] == ["blocks.0.hook_resid_post"] and iv.calls == 1
    iv.calls = 0
    icl_heads.evaluate(tiny_llama, tiny_prompts, interventions=[iv], batch_size=4, progress=False)
    assert iv.calls == -(-len(tiny_prompts) // 4)
    iv.calls = 0
    index = torch.arange(len(tiny_prompts))
    clean_run(tiny_llama, tiny_prompts, index, query_only=True, layers=[1], interventions=[iv])
    assert iv.calls == 1
