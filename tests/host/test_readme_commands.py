"""Every ```bash block of README.md runs, on a small budget, so the README cannot drift from the CLI.

How each line of every ```bash block is treated (continuations joined, ``# comments`` dropped):

* ``edgetl ...`` and ``edgetl-device ...`` lines run in-process (``edgetl.cli.main`` /
  ``edgetl_runtime.cli.main``), in README order, in one scratch folder, so later lines use what earlier
  ones wrote (``runs/ft``, ``model.edgetl`` ...). Each must exit 0. An edgetl line with ``...`` in it
  fails the test: the README shows commands a reader can paste.
* The budget: the flags in :data:`BUDGET` replace the README's values, or are added when absent, for that
  (sub)command: 64 px, 1 epoch, a few images per class, few timing runs. Nothing else changes.
* The files the examples name (``photos/cat``, ``photos/cup``, ``a.jpg``, ``b.jpg``) are made first from
  skimage's sample photos; Fashion-MNIST must be on disk (``make data``), as the README says.
* Other lines are not run; their first word needs a reason in :data:`NOT_RUN` (GPU, torchrun, the test
  suite itself ...). A new kind of line fails the test until its reason is added here. The edgetl flags
  of a ``torchrun ... -m edgetl.cli ...`` line are still parsed. Exact edgetl
  commands in :data:`NOT_RUN_EDGETL` are skipped with the reason given there.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from user_photos import photo_crops, write_class_folders

pytestmark = [pytest.mark.host, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "README.md"

# (command, subcommand) -> flags forced to these values (appended when absent). "*" applies to all.
BUDGET: dict[tuple[str, str], dict[str, str]] = {
    ("edgetl", "finetune"): {"--image-size": "64", "--epochs": "1", "--train-per-class": "8", "--test-per-class": "4"},
    ("edgetl", "export"): {"--image-size": "64", "--calib-count": "40", "--eval-count": "100"},
    ("edgetl", "bench fewshot"): {"--seeds": "1", "--shots": "1", "--test-count": "40", "--pool-per-class": "2"},
    ("edgetl", "bench latency"): {"--runs": "3", "--warmup": "1", "--batch-sizes": "1"},
    ("edgetl", "demo"): {"--image-size": "64", "--seeds": "1", "--epochs": "1"},
    ("edgetl", "bench backbones"): {
        "--backbones": "tf_efficientnet_lite0",
        "--sizes": "32",
        "--export-precisions": "fp32",
        "--splits": "2",
        "--runs": "10",
        "--max-seconds": "0.1",
    },
    ("edgetl-device", "bench"): {"--runs": "3"},
    ("edgetl-device", "compare"): {"--splits": "2", "--runs": "10", "--max-seconds": "0.1"},
}
NOT_RUN = {
    "make": "make targets set up the venv and run the whole demo or test suite (minutes; the demo has its own test)",
    "torchrun": "needs two worker processes; DDP is covered by tests/host/test_distributed.py",
    ".venv/bin/pytest": "runs the test suite this test is part of",
    "pytest": "runs the test suite this test is part of",
    "pip": "installs packages (network)",
    "python": "benchmark scripts run for minutes; their functions have unit tests",
    "bash": "scripts for other machines (ARM64, GPU)",
    "docker": "needs a container runtime",
    "nvidia-smi": "needs a GPU",
    "trtexec": "needs TensorRT and a GPU",
}
NOT_RUN_EDGETL: dict[str, str] = {}


def readme_commands(text: str) -> list[str]:
    """Command lines of every ```bash block, continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return lines


def _subcommand(argv: list[str]) -> str:
    words = [a for a in argv[1:] if not a.startswith("-")]
    if argv[0] == "edgetl-device":  # global flags come first: --bundle X --state Y <command>
        values = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
        words = [a for a in argv[1:] if not a.startswith("-") and a not in values]
    if words[:1] == ["bench"] and argv[0] == "edgetl":
        return " ".join(words[:2])
    return words[0] if words else ""


def budgeted(argv: list[str]) -> list[str]:
    """``argv`` with the :data:`BUDGET` flags of its (sub)command set."""
    flags = BUDGET.get((argv[0], _subcommand(argv)), {})
    out = list(argv)
    for flag, value in flags.items():
        if flag in ("--train-per-class", "--test-per-class") and "fashion-mnist" not in out:
            continue  # a user's photo folder is already small
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def _make_example_files(root: Path) -> None:
    from PIL import Image

    write_class_folders(root / "photos", n=8, classes=("chelsea", "coffee"))
    (root / "photos" / "chelsea").rename(root / "photos" / "cat")
    (root / "photos" / "coffee").rename(root / "photos" / "cup")
    for name, crop in zip(("a.jpg", "b.jpg"), photo_crops("chelsea", 2, seed=7), strict=True):
        Image.fromarray(crop).save(root / name)


def test_readme_parses_into_commands() -> None:
    lines = readme_commands(README.read_text())
    assert any(line.startswith("edgetl finetune") for line in lines)
    assert any(line.startswith("edgetl-device") for line in lines)
    first_words = {shlex.split(line, comments=True)[0] for line in lines}
    unexplained = sorted(first_words - {"edgetl", "edgetl-device"} - set(NOT_RUN))
    assert unexplained == [], f"README runs commands this test has no reason to skip: {unexplained}"


def test_every_readme_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgetl.cli import build_parser
    from edgetl.cli import main as edgetl
    from edgetl.datasets import fashion_mnist_dir
    from edgetl_runtime.cli import main as device

    if fashion_mnist_dir() is None:
        pytest.skip("Fashion-MNIST is not on disk (make data); the README's fine-tune uses it")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _make_example_files(tmp_path)
    ran, skipped = [], []
    for line in readme_commands(README.read_text()):
        argv = shlex.split(line, comments=True)
        if argv[0] not in ("edgetl", "edgetl-device"):
            assert argv[0] in NOT_RUN, f"no reason to skip README line: {line}"
            if argv[0] == "torchrun" and "edgetl.cli" in argv:  # not run, but its edgetl flags must parse
                build_parser().parse_args(argv[argv.index("edgetl.cli") + 1 :])
            skipped.append((line, NOT_RUN[argv[0]]))
            continue
        assert "..." not in argv, f"README line elides arguments; show a runnable command: {line}"
        if " ".join(argv) in NOT_RUN_EDGETL:
            skipped.append((line, NOT_RUN_EDGETL[" ".join(argv)]))
            continue
        run = budgeted(argv)
        code = (edgetl if argv[0] == "edgetl" else device)(run[1:])
        _, err = capsys.readouterr()
        assert code == 0, f"README line failed (ran as: {' '.join(run)}):\n{err[-2000:]}"
        ran.append(line)
    assert len(ran) >= 10, ran
    for line, reason in skipped:
        print(f"not run: {line}  -- {reason}")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("edgetl finetune m --data fashion-mnist --epochs 3 -o r",
         "edgetl finetune m --data fashion-mnist --epochs 1 -o r --image-size 64 --train-per-class 8 "
         "--test-per-class 4"),
        ("edgetl finetune m --data photos -o r", "edgetl finetune m --data photos -o r --image-size 64 --epochs 1"),
        ("edgetl-device --bundle b bench", "edgetl-device --bundle b bench --runs 3"),
        ("edgetl bench fewshot b", "edgetl bench fewshot b --seeds 1 --shots 1 --test-count 40 --pool-per-class 2"),
    ],
)  # fmt: skip
def test_the_budget_rules(line: str, expected: str) -> None:
    assert " ".join(budgeted(shlex.split(line))) == expected
