"""Progress a person can see on long runs (issue 21: a bar that ticks at least every ~10 s):
a :class:`Heartbeat` shows on a progress bar the block a forward pass has reached, so a bar
that counts batches still moves while one batch runs through the model."""

from __future__ import annotations

import time

from torch import Tensor

from .hooks import Capture


class Heartbeat:
    """Shows the block a run has reached on a progress bar (``block 12/30``), at most
    once a second: a bar that counts batches moves at least once per block, not only once
    per batch (a batch of 16 prompts through 30 blocks can take a minute on a laptop CPU).

    ``on_block(i)`` is the :attr:`CleanRun.on_block` of :func:`run_items`; ``capture`` a
    hook on every block's output for a full forward pass (stores nothing).

    Example::

        beat = Heartbeat(bar, model.cfg.n_layers)
        with applied(model, [beat.capture]):
            model(tokens)
    """

    def __init__(self, bar, n_layers: int, every: float = 1.0):
        self.bar, self.n_layers, self.every, self.last = bar, n_layers, every, 0.0
        self.capture = Capture(names=_block_output, positions="query", reduce=self._hook)

    def on_block(self, layer: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every and not self.bar.disable:
            self.last = now
            self.bar.set_postfix_str(f"block {layer + 1}/{self.n_layers}")

    def _hook(self, act: Tensor, name: str) -> Tensor:
        self.on_block(int(name.split(".")[1]))
        return act[:0]


def _block_output(name: str) -> bool:
    return name.startswith("blocks.") and name.endswith(".hook_resid_post")


__all__ = ["Heartbeat"]
