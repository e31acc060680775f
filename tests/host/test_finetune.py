"""Host fine-tuning: every strategy, real freezing, LR layout, early stopping, feature caching, typed errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edgetl.backbones import Backbone, create_backbone
from edgetl.datasets import ImageDataset, from_arrays, k_shot
from edgetl.finetune import FinetuneConfig, Strategy, finetune
from edgetl.finetune.optim import layer_scales, param_groups, warmup_cosine
from edgetl.finetune.stages import FreezePlan, freeze_batchnorm, split_stages, unfreeze_batchnorm
from edgetl.finetune.trainer import EarlyStopping
from edgetl_runtime.errors import ConfigError, DatasetError

pytestmark = pytest.mark.host

MODEL, SIZE = "mobilenetv3_small_100", 32


def synthetic(n_per_class: int = 8, n_classes: int = 3, seed: int = 0) -> ImageDataset:
    """Tiny 28x28 grayscale images whose brightness depends on the class (learnable, dataset-free)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    images = rng.integers(0, 60, (len(labels), 28, 28)) + 80 * labels[:, None, None]
    return from_arrays(images.astype(np.uint8), labels, [f"c{i}" for i in range(n_classes)])


def tiny_backbone() -> Backbone:
    torch.manual_seed(0)
    return create_backbone(MODEL, weights="none", image_size=SIZE)


def quick(strategy: str, **kw: object) -> FinetuneConfig:
    base: dict[str, object] = dict(strategy=strategy, epochs=2, batch_size=8, val_fraction=0.25, progress=False)
    if strategy == "partial":
        base["freeze_stages"] = 3
    return FinetuneConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", [s.value for s in Strategy])
def test_every_strategy_writes_a_checkpoint_that_reloads_identically(strategy: str, tmp_path: Path) -> None:
    backbone, data = tiny_backbone(), synthetic()
    result = finetune(backbone, data, None, synthetic(3, seed=1), quick(strategy), tmp_path)
    assert result.epochs_run == 2 and result.test_accuracy is not None and result.confusion.sum() == 9
    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert {"head.weight", "head.bias"} <= set(keys) and all(k.startswith(("backbone.", "head.")) for k in keys)
    cfg = json.loads((tmp_path / "edgetl_config.json").read_text())
    assert {"name", "timm_name", "classes", "preprocess", "weights", "finetune", "metrics"} <= set(cfg)
    assert cfg["finetune"]["strategy"] == strategy and cfg["classes"] == ["c0", "c1", "c2"]
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "curves.png").stat().st_size > 1000
    reloaded = create_backbone(tmp_path)
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(reloaded.head(reloaded.model(x)), backbone.head(backbone.model(x)))
    assert reloaded.spec == backbone.spec and reloaded.classes == ["c0", "c1", "c2"]


def test_partial_leaves_frozen_stages_and_their_bn_stats_untouched(tmp_path: Path) -> None:
    backbone = tiny_backbone()
    frozen_names = {n for s in split_stages(backbone.model)[:3] for n in s.module_names}
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    finetune(backbone, synthetic(), None, None, quick("partial", lr=1e-2), tmp_path)
    after = backbone.model.state_dict()
    frozen_keys = [k for k in before if k.rsplit(".", 1)[0] in frozen_names]
    assert any("running_mean" in k for k in frozen_keys)
    assert all(torch.equal(before[k], after[k]) for k in frozen_keys)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in frozen_keys)
    # Freezing is released on return: the model trains normally again if the caller continues.
    assert all(p.requires_grad for p in backbone.model.parameters())
    assert not any("train" in m.__dict__ for m in backbone.model.modules())


def test_frozen_batchnorm_gives_identical_outputs_in_train_and_eval_mode() -> None:
    model = tiny_backbone().model
    x = torch.randn(4, 3, SIZE, SIZE)
    freeze_batchnorm(model)
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    with torch.no_grad():
        train_out = model.forward_features(x)
        model.eval()
        eval_out = model.forward_features(x)
    assert torch.equal(train_out, eval_out)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    unfreeze_batchnorm(model, training=True)  # the control: live BN normalises with batch statistics
    with torch.no_grad():
        assert not torch.allclose(model.forward_features(x), eval_out)


def test_gradual_unfreezes_deepest_stage_first() -> None:
    model = tiny_backbone().model
    plan = FreezePlan(model, FinetuneConfig.gradual(unfreeze_every=2))
    n = plan.num_stages
    assert [len(plan.frozen_at(e)) for e in range(6)] == [n, n, n - 1, n - 1, n - 2, n - 2]
    assert plan.apply(2) and not plan.apply(3)
    trainable = [any(p.requires_grad for n_, p in model.named_parameters() if n_ in s.param_names) for s in plan.stages]
    assert trainable == [False] * (n - 1) + [True]


def test_layer_decay_lrs_grow_monotonically_with_depth() -> None:
    model = tiny_backbone().model
    stages = split_stages(model)
    config = FinetuneConfig.full(lr=1e-3, layer_decay=0.7)
    groups = param_groups(model, torch.nn.Linear(1024, 3), stages, config)
    lr_by_stage = {g["stage"]: g["lr"] for g in groups}
    lrs = [lr_by_stage[s] for s in sorted(lr_by_stage)]
    assert len(lrs) == len(stages) + 1 and lrs[-1] == pytest.approx(1e-3)
    assert all(a < b for a, b in itertools.pairwise(lrs))
    assert all(g["weight_decay"] == 0 for g in groups if all(p.ndim == 1 for p in g["params"]))
    assert layer_scales(3, 1.0) == [1.0] * 4


def test_warmup_then_cosine_schedule_shape() -> None:
    f = [warmup_cosine(s, warmup_steps=5, total_steps=50, min_ratio=0.01) for s in range(50)]
    assert f[0] == pytest.approx(0.2) and f[4] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(f[:5]))
    assert all(a >= b for a, b in itertools.pairwise(f[4:]))
    assert f[-1] < 0.02 and warmup_cosine(50, 5, 50, 0.01) == pytest.approx(0.01)


def test_early_stopping_stops_after_patience(tmp_path: Path) -> None:
    stopper = EarlyStopping(patience=2)
    assert [stopper.step(a) for a in (0.5, 0.6, 0.6, 0.55)] == [(True, False), (True, False), (False, False),
                                                               (False, True)]  # fmt: skip
    # A learning rate too small to change any prediction: no improvement after epoch 0.
    cfg = FinetuneConfig.linear_probe(epochs=20, lr=1e-12, patience=2, val_fraction=0.25, progress=False)
    result = finetune(tiny_backbone(), synthetic(), None, None, cfg, tmp_path)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 0


def test_linear_probe_runs_the_backbone_once_per_image_and_caches_to_disk(tmp_path: Path) -> None:
    seen: list[int] = []

    def count(_module: torch.nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        seen.append(len(args[0]))

    train, test = synthetic(), synthetic(2, seed=1)
    cfg = FinetuneConfig.linear_probe(
        epochs=5, val_fraction=0.25, progress=False, feature_cache_dir=str(tmp_path / "c")
    )
    for run, expected in ((1, len(train) + len(test)), (2, 0)):
        backbone = tiny_backbone()
        hook = backbone.model.register_forward_hook(count)
        seen.clear()
        result = finetune(backbone, train, None, test, cfg, tmp_path / f"run{run}")
        hook.remove()
        assert sum(seen) == expected, f"run {run}"
        assert result.epochs_run >= 1
    assert len(list((tmp_path / "c").glob("features-*.npz"))) == 3  # train, val, test


def test_bad_inputs_raise_typed_errors(tmp_path: Path) -> None:
    data = synthetic()
    one_class = data.subset(np.flatnonzero(data.labels == 0))
    with pytest.raises(DatasetError, match="at least 2 classes"):
        finetune(tiny_backbone(), one_class, None, None, quick("full"), tmp_path)
    with pytest.raises(DatasetError, match="empty"):
        finetune(tiny_backbone(), data.subset([]), None, None, quick("full"), tmp_path)
    with pytest.raises(DatasetError, match="split has classes"):
        finetune(tiny_backbone(), data, data.select_classes([0, 1]), None, quick("full"), tmp_path)
    with pytest.raises(DatasetError, match="K=9"):
        k_shot(data, 9)
    with pytest.raises(ConfigError, match="Unknown strategy 'finetune-all'"):
        FinetuneConfig(strategy="finetune-all")
    with pytest.raises(ConfigError, match="2 problems"):
        FinetuneConfig(epochs=0, lr=-1)
    with pytest.raises(ConfigError, match="only 8 stages"):
        finetune(tiny_backbone(), data, None, None, quick("partial", freeze_stages=99), tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_cli_finetune_on_an_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    from edgetl.cli import main

    data = synthetic(6)
    for i, (img, label) in enumerate(zip(data.images, data.labels, strict=True)):
        (tmp_path / "imgs" / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "imgs" / f"class{label}" / f"{i}.png")
    out = tmp_path / "run"
    argv = ["finetune", MODEL, "--weights", "none", "--data", str(tmp_path / "imgs"), "--classes", "0-1",
            "--strategy", "partial", "--freeze-stages", "2", "--epochs", "1", "--image-size", str(SIZE),
            "--batch-size", "4", "--test-fraction", "0.34", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    cfg = json.loads((out / "edgetl_config.json").read_text())
    assert cfg["classes"] == ["class0", "class1"] and cfg["finetune"]["freeze_stages"] == 2
    assert main([*argv[:-2], "--classes", "0-7", "-o", str(out)]) == 2  # typed error -> exit code 2
