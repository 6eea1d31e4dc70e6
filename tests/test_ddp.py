"""Data parallelism: 2 CPU processes (gloo) give the prompts of 1 process with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from mmprompt.engine.clip_source import resolve_clip
from mmprompt.engine.run import load_splits, run_experiment
from test_engine_support import (
    fast_config,
    free_port,
    join_process_group,
    make_data_root,
    one_thread,
    save_tiny_clip,
)

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
# 8 training images (4 shots x 2 base classes); batch 4 splits 2 + 2, batch 3 splits 2 + 1 (and drops 2)
CASES = {"even": ["data.shots=4", "optim.batch_size=4"], "uneven": ["data.shots=4", "optim.batch_size=3"]}


def _worker(rank: int, world: int, port: int, root: str, weights: str, out: str, cache: str) -> None:
    ctx = join_process_group(rank, world, port, cache)
    assert ctx.enabled and ctx.rank == rank and ctx.world_size == world
    try:
        clip, info = resolve_clip(Path(weights), "quick_gelu", ctx.device)
        for name, extra in CASES.items():
            cfg = fast_config(Path(root), Path(weights), extra=extra)
            splits = load_splits(cfg, ctx=ctx)
            run_experiment(cfg, clip, info, Path(out) / name, train_splits=splits, ctx=ctx, progress=False)
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MMPROMPT_CACHE", str(cache))
    root = make_data_root(tmp_path / "data")
    weights = save_tiny_clip(tmp_path / "tiny.pt")
    clip, info = resolve_clip(weights, "quick_gelu", "cpu")
    for name, extra in CASES.items():  # one process, same global batch (this also fills the few-shot cache)
        cfg = fast_config(root, weights, extra=extra)
        run_experiment(cfg, clip, info, tmp_path / "single" / name, train_splits=load_splits(cfg), progress=False)

    mp.spawn(_worker, args=(2, free_port(), str(root), str(weights), str(tmp_path / "ddp"), str(cache)),
             nprocs=2, join=True)

    for name in CASES:
        one = load_file(str(tmp_path / "single" / name / "prompts.safetensors"))
        two = load_file(str(tmp_path / "ddp" / name / "prompts.safetensors"))
        assert sorted(one) == sorted(two)
        for k in one:
            torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-5, msg=f"{name}: {k}")
        m1 = json.loads((tmp_path / "single" / name / "metrics.json").read_text())
        m2 = json.loads((tmp_path / "ddp" / name / "metrics.json").read_text())
        for split in ("base", "novel") if "base" in m1["eval"] else ("test",):
            assert m2["eval"][split]["total"] == m1["eval"][split]["total"]  # sharded evaluation, summed
            assert m2["eval"][split]["accuracy"] == pytest.approx(m1["eval"][split]["accuracy"])
        # only rank 0 wrote: one log line per epoch
        epochs = [json.loads(x) for x in (tmp_path / "ddp" / name / "log.jsonl").read_text().splitlines()]
        assert sum(e["event"] == "epoch" for e in epochs) == 3
