"""The largest gaps between visible progress of a CLI command (issue 21: long runs tick at
least every ~10 s).

Every tqdm bar's creation, redraw (an update or a new postfix such as ``block 12/30``) and
close is a visible change on the terminal; this runs ``icl-heads <args>`` in-process with
those events timed and prints the largest gaps, overall and inside each bar (what came
before each). Stopped early (Ctrl-C or SIGTERM, e.g. under ``timeout``), it prints the gaps
so far::

    python benchmarks/tick_gaps.py ablate --out results/tick-gaps/ablate
    timeout 600 python benchmarks/tick_gaps.py geometry --ablate --out results/tick-gaps/geometry
"""

from __future__ import annotations

import signal
import sys
import time

from tqdm import std

EVENTS: list[tuple[float, str]] = []


def _wrap(name: str) -> None:
    original = getattr(std.tqdm, name)

    def wrapped(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if not getattr(self, "disable", True):
            EVENTS.append((time.perf_counter(), f"{name} {getattr(self, 'desc', '')}"))
        return out

    setattr(std.tqdm, name, wrapped)


for _name in ("__init__", "refresh", "close"):
    _wrap(_name)


def _stop(signum, frame):
    raise KeyboardInterrupt


def report(start: float) -> None:
    """Print the largest gaps between events, overall and inside each bar."""
    pairs = list(zip(EVENTS, EVENTS[1:]))
    gaps = sorted(((b[0] - a[0], a[1], b[1]) for a, b in pairs), reverse=True)
    print(f"\n{len(EVENTS)} progress events over {EVENTS[-1][0] - start:.1f} s", file=sys.stderr)
    for gap, before, after in gaps[:10]:
        print(f"  gap {gap:6.1f} s: after '{before}' until '{after}'", file=sys.stderr)
    inside: dict[str, float] = {}
    for a, b in pairs:
        bar_a, bar_b = a[1].split(" ", 1)[1], b[1].split(" ", 1)[1]
        if bar_a == bar_b and not a[1].startswith("close"):
            inside[bar_a] = max(inside.get(bar_a, 0.0), b[0] - a[0])
    print("largest gap inside each bar:", file=sys.stderr)
    for bar, gap in sorted(inside.items(), key=lambda kv: -kv[1]):
        print(f"  {bar!r}: {gap:.1f} s", file=sys.stderr)


def main(argv: list[str]) -> int:
    from icl_heads.cli import main as cli

    signal.signal(signal.SIGTERM, _stop)
    start = time.perf_counter()
    EVENTS.append((start, "start (command)"))
    code = 130
    try:
        code = cli(argv)
    except KeyboardInterrupt:
        print("\n(stopped early)", file=sys.stderr)
    finally:
        EVENTS.append((time.perf_counter(), "end (command)"))
        report(start)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
