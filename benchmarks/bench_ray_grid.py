"""A 2 x 2 quick grid (2 tasks x the trtl and geometry families) with ``icl-heads
reproduce`` on the local backend (PyTorch's default threads, and 1 thread as each Ray task
has) and on a new local Ray instance, timed end to end (each a fresh process, model loads
and Ray's start included), and the trees compared table by table.

    python benchmarks/bench_ray_grid.py                 # the tiny random Llama (seconds)
    python benchmarks/bench_ray_grid.py --model default # the embedded SmolLM2-135M

The tiny model is saved as a Hugging Face directory so that Ray workers load it by name.
The load average is printed before and after: on a shared machine it dominates.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from icl_heads.experiments.cells import load_cells
from icl_heads.models import load_tokenizer


def tiny_model_dir(path: Path) -> Path:
    """A 2-layer random Llama (d_model 32) with the SmolLM2 tokenizer, as a HF directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer("default")
    cfg = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run(model: str, out: Path, backend: str, n: int, threads: int | None = None) -> float:
    """Wall seconds of one ``reproduce`` in a fresh process (``threads``: OMP_NUM_THREADS,
    the PyTorch threads; Ray gives each task 1)."""
    argv = [sys.executable, "-m", "icl_heads.cli", "reproduce", "--models", model]
    argv += ["--tasks", "sentiment", "topic", "--quick", "--n", str(n), "--no-reports"]
    argv += ["--out", str(out), "--backend", backend]
    env = dict(os.environ, **({} if threads is None else {"OMP_NUM_THREADS": str(threads)}))
    started = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def same_tables(a: Path, b: Path) -> bool:
    for family in ("trtl", "geometry"):
        x, y = load_cells(a / family), load_cells(b / family)
        for model in x:
            for task in x[model]:
                for name, result in x[model][task].items():
                    other = y[model][task][name]
                    for key in ("table", *result.tables):
                        left = result.table if key == "table" else result.tables[key]
                        right = other.table if key == "table" else other.tables[key]
                        if not left.equals(right):
                            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model name (default: the tiny Llama)")
    parser.add_argument("--n", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model or str(tiny_model_dir(root / "tiny-llama"))
        print(f"cores: {os.cpu_count()}; load average before: {os.getloadavg()}")
        rows = []
        for backend, threads in (("local", None), ("local", 1), ("ray", None)):
            name = f"{backend}-{threads or 'default'}"
            seconds = run(model, root / name, backend, args.n, threads)
            shown = "default" if threads is None else threads
            rows.append({"backend": backend, "torch threads": shown, "seconds": round(seconds, 1)})
        print(pd.DataFrame(rows).to_string(index=False))
        same = all(
            same_tables(root / "local-default", root / o) for o in ("local-1", "ray-default")
        )
        print(f"identical tables: {same}")
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
