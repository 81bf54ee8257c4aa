"""Progress bars of long runs count batches and show the block reached in between (issue
21: ``ablate`` and ``geometry --ablate`` ticked once per head set, 50-95 s apart on 2
cores). The bars of :func:`icl_heads.last_token.clean_groups` (every experiment that
restarts prompts from a layer: ablations, geometry ablations, the fast sweeps) are recorded
here on a tiny model."""

from __future__ import annotations

import pytest
import torch
from tqdm.auto import tqdm

import icl_heads as ih
from icl_heads import last_token
from icl_heads.experiments import trtl
from icl_heads.experiments.geometry import head_ablation_geometry


class _Recorded(tqdm):
    """A tqdm bar that keeps every update and postfix it was given."""

    bars: list[_Recorded] = []

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = False
        kwargs["file"] = open("/dev/null", "w")  # noqa: SIM115 (closed with the bar)
        super().__init__(*args, **kwargs)
        self.updates: list[float] = []
        self.postfixes: list[str] = []
        _Recorded.bars.append(self)

    def update(self, n=1):
        self.updates.append(n)
        return super().update(n)

    def set_postfix_str(self, s="", refresh=True):
        self.postfixes.append(s)
        return super().set_postfix_str(s, refresh)

    def close(self):
        super().close()
        self.fp.close()


@pytest.fixture
def bars(monkeypatch):
    _Recorded.bars = []
    monkeypatch.setattr(last_token, "tqdm", _Recorded)
    return _Recorded.bars


def test_the_ablation_bar_counts_batches_of_every_condition(tiny_llama, tiny_prompts, bars):
    heads = {"TR": [(0, 1)], "TL": [(1, 2), (1, 3)]}
    trtl.ablation_experiment(
        tiny_llama, tiny_prompts, heads, n_random=2, n_boot=20, batch_size=4, progress=True
    )
    (bar,) = [b for b in bars if b.desc == "ablation"]
    groups, runs = 3, 1 + 2 + 2 * 2  # 10 prompts in groups of 4; baseline, TR, TL, 2 x 2 random
    assert bar.unit == "batch"
    assert bar.total == groups * runs, bar.total  # not 7 conditions, not 70 prompt runs
    assert bar.updates == [1] * (groups * runs) and bar.n == bar.total


def test_the_geometry_ablation_bar_counts_batches_and_shows_the_block(
    tiny_llama, tiny_prompts, bars, monkeypatch
):
    from icl_heads import progress

    monkeypatch.setattr(progress.Heartbeat, "__init__", _every_block(progress.Heartbeat.__init__))
    head_ablation_geometry(
        tiny_llama,
        tiny_prompts,
        {"PTH": [(0, 1)]},
        n_random=1,
        layers=[0, 1, 2],
        folds=2,
        n_boot=10,
        batch_size=4,
        progress=True,
    )
    (bar,) = [b for b in bars if b.desc == "ablated runs"]
    assert bar.unit == "batch" and bar.total == 3 * (1 + 1 + 1), bar.total
    assert bar.n == bar.total
    # between batches the bar shows the block reached: in the clean pass and in the reruns
    L = tiny_llama.cfg.n_layers
    assert f"block {L}/{L}" in bar.postfixes and "block 1/2" in bar.postfixes, bar.postfixes
    assert len(bar.postfixes) >= bar.total * 2, bar.postfixes


def _every_block(init):
    def wrapped(self, bar, n_layers, every=1.0):
        init(self, bar, n_layers, every=0.0)  # no time throttle: every block shows

    return wrapped


def test_no_bar_and_no_heartbeat_without_progress(tiny_llama, tiny_prompts, monkeypatch):
    shown = []
    monkeypatch.setattr(last_token.Heartbeat, "on_block", lambda self, layer: shown.append(layer))
    ih.ablation_experiment(
        tiny_llama, tiny_prompts, {"TR": [(0, 1)]}, n_random=1, n_boot=10, progress=False
    )
    assert shown == []


def test_the_one_batching_routine_shows_the_block_and_changes_no_number(
    tiny_llama, tiny_prompts, monkeypatch
):
    """Every full-pass analysis streams through ``iter_batches`` (TSLA, means, the
    detectors, query states): its bar shows the block reached inside a batch, and the
    heartbeat's hooks leave every number as it is."""
    from icl_heads import activations

    names = ["blocks.1.attn.hook_z"]
    quiet = ih.collect(tiny_llama, tiny_prompts, names, batch_size=4, progress=False)
    _Recorded.bars = []
    monkeypatch.setattr(activations, "tqdm", _Recorded)
    shown = ih.collect(tiny_llama, tiny_prompts, names, batch_size=4, progress=True)
    (bar,) = _Recorded.bars
    assert bar.unit == "batch" and bar.n == bar.total == 3
    assert any(p.startswith("block ") for p in bar.postfixes), bar.postfixes
    assert torch.equal(quiet.logits, shown.logits)
    assert torch.equal(quiet.activations[names[0]], shown.activations[names[0]])
