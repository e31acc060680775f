"""Data-parallel fine-tuning under torchrun (gloo on CPU): ranks stay in lockstep, only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetl.backbones import create_backbone
from edgetl.finetune.distributed import DistContext, gather_rows

pytestmark = pytest.mark.host

WORKER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import numpy as np, torch
    from edgetl.backbones import create_backbone
    from edgetl.datasets import from_arrays
    from edgetl.finetune import FinetuneConfig, finetune
    from edgetl.finetune import checkpoint as ckpt

    import torch.distributed as dist

    out = Path(sys.argv[1])
    dist.init_process_group("gloo")  # a caller-owned group: finetune() must use it and leave it open
    rank = dist.get_rank()
    real_save = ckpt.save_checkpoint

    def spy(output_dir, *args, **kwargs):  # record which rank writes each checkpoint
        (out / f"writer-{output_dir.name}-rank{rank}").touch()
        return real_save(output_dir, *args, **kwargs)

    ckpt.save_checkpoint = spy
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    images = (rng.integers(0, 60, (30, 28, 28)) + 80 * labels[:, None, None]).astype(np.uint8)
    data = from_arrays(images, labels, ["a", "b", "c"])
    for strategy in ("full", "gradual", "linear-probe"):
        torch.manual_seed(rank)  # different inits per rank: DDP must broadcast rank 0's weights
        backbone = create_backbone("mobilenetv3_small_100", weights="none", image_size=32)
        config = FinetuneConfig(strategy=strategy, epochs=3, batch_size=4, val_fraction=0.2, lr=3e-3,
                                unfreeze_every=1, patience=None, progress=False)
        result = finetune(backbone, data, None, data.subset(range(0, 30, 3)), config, out / strategy)
        state = {f"backbone.{k}": v for k, v in backbone.model.state_dict().items()}
        state |= {f"head.{k}": v for k, v in backbone.head.state_dict().items()}
        np.savez(out / f"{strategy}-rank{rank}.npz", **{k: v.cpu().numpy() for k, v in state.items()})
        (out / f"{strategy}-rank{rank}.txt").write_text(f"{result.test_accuracy} {result.world_size}")
    assert dist.is_initialized()
    dist.destroy_process_group()
    """
)


def test_ddp_ranks_end_identical_and_only_rank0_writes(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # gradual also rebuilds the DDP wrapper as stages unfreeze; linear-probe shards feature extraction
    for strategy in ("full", "gradual", "linear-probe"):
        r0, r1 = np.load(tmp_path / f"{strategy}-rank0.npz"), np.load(tmp_path / f"{strategy}-rank1.npz")
        assert sorted(r0.files) == sorted(r1.files)
        differing = [k for k in r0.files if not np.array_equal(r0[k], r1[k])]
        assert not differing, f"{strategy}: ranks diverged in {differing[:5]}"
        assert sorted(p.name for p in tmp_path.glob(f"writer-{strategy}-*")) == [f"writer-{strategy}-rank0"]
        results = {(tmp_path / f"{strategy}-rank{r}.txt").read_text() for r in (0, 1)}
        assert len(results) == 1 and results.pop().endswith(" 2")
        # The checkpoint holds exactly the state both ranks ended with.
        reloaded = create_backbone(tmp_path / strategy)
        assert np.array_equal(reloaded.head.weight.detach().numpy(), r0["head.weight"])
        assert all(np.array_equal(v.numpy(), r0[f"backbone.{k}"]) for k, v in reloaded.model.state_dict().items())
        assert json.loads((tmp_path / strategy / "metrics.json").read_text())["world_size"] == 2


def test_gather_rows_is_identity_in_one_process() -> None:
    rows = torch.arange(12.0).view(6, 2)
    assert torch.equal(gather_rows(rows, 6, DistContext()), rows)
