"""``mmprompt demo --quick``: the whole base-to-novel protocol on the built-in demo world."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mmprompt.cli import main


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo")
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["demo", "--quick", "--output", str(out), "--no-progress"]) == 0
    return out, buffer.getvalue()


def test_quick_demo_prints_the_paper_style_table(quick_demo: tuple[Path, str]) -> None:
    _, printed = quick_demo
    assert "| Dataset | Method | Base | Novel | HM |" in printed
    rows = {m.group(1): [float(x) for x in m.groups()[1:]]
            for m in re.finditer(r"^\| Demo \| (\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", printed, re.M)}
    assert set(rows) == {"zeroshot", "coop", "maple"}
    for base, novel, hm in rows.values():
        assert 0 <= base <= 100 and 0 <= novel <= 100
        assert hm == pytest.approx(2 * base * novel / (base + novel), abs=0.01)


def test_quick_demo_writes_results_and_shows_learning(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    runs = out / "runs"
    for suffix in ("json", "md", "csv", "png"):
        assert (runs / f"results.{suffix}").is_file()
    results = json.loads((runs / "results.json").read_text())
    mean = {m: results["methods"][m]["datasets"]["mmprompt_demo"]["mean"] for m in ("zeroshot", "coop", "maple")}
    chance = 100 / 12  # 12 novel classes
    assert mean["zeroshot"]["novel"] > 3 * chance  # zero-shot transfer works in the demo world
    assert mean["maple"]["base"] > mean["zeroshot"]["base"]  # prompt learning raises base accuracy
    assert mean["coop"]["base"] > mean["zeroshot"]["base"]
    # every run wrote its resolved config, metrics and prompts
    for method in ("coop", "maple"):
        run = runs / method / "mmprompt_demo" / "base2novel-16shots" / "seed1"
        for name in ("config.yaml", "metrics.json", "prompts.json", "prompts.safetensors"):
            assert (run / name).is_file(), (method, name)


def test_demo_prompts_predict_new_class_names(quick_demo: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    """The MaPLe prompts trained on base classes classify with class names given at predict time."""
    from mmprompt import Predictor

    out, _ = quick_demo
    run = out / "runs" / "maple" / "mmprompt_demo" / "base2novel-16shots" / "seed1"
    split = json.loads((out / "data" / "mmprompt_demo" / "split_zhou_MMPromptDemo.json").read_text())
    path, _, name = split["test"][-1]  # a novel class
    image = out / "data" / "mmprompt_demo" / "images" / path
    names = sorted({c for _, _, c in split["test"]})
    predictor = Predictor.from_checkpoint(run)  # loads the demo CLIP recorded in the checkpoint
    predictor.set_classes(names)
    (top,) = predictor.predict([image], top_k=3)
    assert len(top) == 3 and all(n in names for n, _ in top)
    assert 0 < sum(p for _, p in top) <= 1 + 1e-6 and top[0][1] >= top[1][1] >= top[2][1]
    assert main(["predict", "--checkpoint", str(run), "--classes", ",".join(names), str(image), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed  # one entry for the image
