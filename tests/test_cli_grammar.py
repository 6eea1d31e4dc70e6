"""One command-line grammar across subcommands (issue 21, point 10): names, lists, errors, flags, help."""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import pytest

from mmprompt.cli import _ProgressAwareHandler, build_parser, main
from mmprompt.commands.grammar import int_list, protocol_name


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser([argv[0]]).parse_args(list(argv))


@pytest.mark.parametrize(("spelling", "name"), [
    ("base2novel", "base2novel"), ("base-to-novel", "base2novel"), ("Base-to-Novel", "base2novel"),
    ("domain-generalisation", "domain-generalization"), ("domain-generalization", "domain-generalization"),
    ("cross-dataset", "cross-dataset"), ("few-shot", "few-shot"), ("few_shot", "few-shot")])
def test_protocols_take_the_readmes_words(spelling: str, name: str) -> None:
    assert protocol_name(spelling) == name
    assert _parse("benchmark", spelling, "--output", "x").protocol == name
    assert _parse("reproduce", "maple", "--protocols", spelling).protocols == [name]


def test_unknown_protocol_lists_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "base-to-old", "--output", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown protocol 'base-to-old'" in err and "base-to-novel" in err


@pytest.mark.parametrize("seeds", [["1,2,3"], ["1", "2", "3"], ["1,2", "3"], ["1,", "2,3"]])
def test_seeds_with_commas_or_spaces(seeds: list[str]) -> None:
    for command in (["benchmark", "few-shot", "--output", "x"], ["reproduce", "maple"], ["demo"]):
        assert _parse(*command, "--seeds", *seeds).seeds == [1, 2, 3]


def test_benchmark_takes_several_shot_counts_and_a_bad_list_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert _parse("benchmark", "few-shot", "--output", "x", "--shots", "1", "2", "4", "8", "16").shots == [1, 2, 4, 8, 16]
    assert _parse("benchmark", "few-shot", "--output", "x", "--shots", "1,2,4").shots == [1, 2, 4]
    with pytest.raises(SystemExit):
        main(["benchmark", "few-shot", "--output", "x", "--seeds", "1,two"])
    assert "invalid integer 'two'" in capsys.readouterr().err
    code = main(["benchmark", "base2novel", "--method", "coop", "--datasets", "mmprompt_demo", "--shots", "1", "2",
                 "--data-root", "d", "--clip", "demo", "--output", "x"])
    assert code == 2
    assert capsys.readouterr().err.startswith("mmprompt benchmark: error (command line): several --shots (1 2) are "
                                              "for the few-shot protocol")


def test_int_list_on_a_plain_parser() -> None:
    parser = argparse.ArgumentParser()
    int_list(parser, "--k")
    assert parser.parse_args(["--k", "4,8", "16"]).k == [4, 8, 16]


@pytest.mark.parametrize(("argv", "command"), [
    (["train", "--config", "coop"], "train"),
    (["eval", "--dataset", "dtd", "--data-root", "d"], "eval"),
    (["benchmark", "base2novel", "--method", "coop", "--output", "x"], "benchmark"),
    (["reproduce", "maple"], "reproduce"),
    (["predict", "img.png"], "predict"),
])
def test_usage_errors_are_one_line_of_the_command_not_a_log_line(argv: list[str], command: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"mmprompt {command}: error (command line): "), err
    assert not any("ERROR" in line for line in err)


def test_verbose_is_accepted_after_the_subcommand(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        assert main(["data", "list", "-v"]) == 0
        assert root.level == logging.DEBUG
        assert "caltech101" in capsys.readouterr().out
        assert main(["data", "--verbose", "list"]) == 0
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_help_texts_say_what_the_commands_do(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "under 2 minutes" not in text and "about 20 s" in text
    assert "CoCoOp, VPT-deep, language-only and IVLP" not in text
    assert "every method of the method table" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    assert "list, inspect, check and download datasets" in listing
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    assert "list" in capsys.readouterr().out


def test_log_lines_never_land_on_a_progress_bars_line() -> None:
    from tqdm import tqdm

    stream = io.StringIO()
    handler = _ProgressAwareHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("mmprompt.test_grammar")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with tqdm(total=3, file=stream, desc="epoch", ascii=True) as bar:
            bar.update(1)
            logger.warning("a log line")
            bar.update(1)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().replace("\r", "\n").split("\n")
    assert "a log line" in lines  # alone on its line, never appended to the bar's text
    assert not any("a log line" in line and "epoch" in line for line in lines)



@pytest.mark.parametrize("method", ["coop", "maple", "kgcoop", "zeroshot"])
def test_train_method_alone_takes_the_base_to_novel_setting(method: str) -> None:
    """README: ``train --method M`` without ``--config`` trains M as base-to-novel does (coop's shared preset
    says subsample: all; it used to train on all classes and report "test")."""
    from mmprompt.commands.train import resolve_config

    args = _parse("train", "--method", method, "--dataset", "mmprompt_demo")
    assert resolve_config(args, "mmprompt_demo").data.subsample == "base"
    args = _parse("train", "--method", method, "--dataset", "mmprompt_demo", "--subsample", "all")
    assert resolve_config(args, "mmprompt_demo").data.subsample == "all"
    args = _parse("train", "--config", "coop", "--dataset", "mmprompt_demo")  # a preset named: as it says
    assert resolve_config(args, "mmprompt_demo").data.subsample == "all"


@pytest.mark.parametrize("command", ["train", "eval"])
def test_train_and_eval_take_threads(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        argv = [command, "--threads", "1", "--dataset", "mmprompt_demo", "--data-root", "nowhere"]
        assert main(argv) == 2  # stops at the missing --output / --checkpoint, after setting the threads
        assert torch.get_num_threads() == 1
        assert main([command, "--threads", "0", "--dataset", "d", "--data-root", "d"]) == 2
        assert "--threads must be >= 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_few_shot_over_several_shot_counts_is_one_sweep_one_table_one_curve(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from mmprompt.demo.world import generate_demo_dataset

    root = tmp_path / "data"
    generate_demo_dataset(root)
    out = tmp_path / "fs"
    code = main(["benchmark", "few-shot", "--method", "coop", "--datasets", "mmprompt_demo", "--shots", "1", "2",
                 "--seeds", "1", "--data-root", str(root), "--clip", "demo", "--device", "cpu", "--threads", "1",
                 "--no-progress", "--output", str(out), "--set", "data.num_workers=0", "optim.epochs=1"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| Dataset | Method | 1 shot | 2 shots |" in printed
    assert f"results in {out}/results.{{json,md,csv,png}}" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["shots"] == [1, 2] and sorted(results["by_shots"]) == ["1", "2"]
    assert set(results["curve"]["methods"]["coop"]["mmprompt_demo"]) == {"1", "2"}
    for k in (1, 2):
        assert (out / "coop" / "mmprompt_demo" / f"few-shot-{k}shots" / "seed1" / "metrics.json").is_file()
    assert (out / "results.png").stat().st_size > 0


def test_cross_dataset_without_its_source_says_so_without_an_empty_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mmprompt.demo.world import generate_demo_dataset

    root = tmp_path / "data"
    generate_demo_dataset(root)
    out = tmp_path / "xd"
    code = main(["benchmark", "cross-dataset", "--method", "coop", "--datasets", "mmprompt_demo", "--seeds", "1",
                 "--data-root", str(root), "--clip", "demo", "--device", "cpu", "--no-progress", "--output", str(out),
                 "--max-retries", "0", "--set", "data.num_workers=0"])
    captured = capsys.readouterr()
    # the pre-flight check finds the missing source (ImageNet) before any run starts: one line, nothing trained
    assert code == 3, captured
    assert "imagenet" in captured.err.lower() and "Traceback" not in captured.err
    assert not (out / "results.png").exists() and not (out / "coop").exists()


def test_bare_weights_take_clip_config_or_clip_arch_on_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bare state dict states no heads / activation / pooling: --clip-config FILE or --clip-arch NAME says it
    (the Python API's config= and architecture=), and the checkpoint records it for eval."""
    import shutil

    from test_engine_support import make_data_root, save_tiny_clip

    (tmp_path / "described").mkdir()
    described = save_tiny_clip(tmp_path / "described" / "tiny.pt")
    bare = tmp_path / "bare" / "tiny.pt"
    bare.parent.mkdir()
    shutil.copy(described, bare)  # the same weights without open_clip_config.json beside them
    config_file = described.parent / "open_clip_config.json"
    root = make_data_root(tmp_path / "data")
    base = ["train", "--method", "coop", "--dataset", "eurosat", "--data-root", str(root), "--clip", str(bare),
            "--device", "cpu", "--threads", "1", "--no-progress", "--shots", "1",
            "--set", "optim.epochs=1", "data.num_workers=0", "method.n_ctx=2"]
    assert main([*base, "--output", str(tmp_path / "r0")]) == 4  # nothing states the missing fields
    capsys.readouterr()
    assert main([*base, "--output", str(tmp_path / "r1"), "--clip-config", str(config_file)]) == 0
    assert main([*base, "--output", str(tmp_path / "r2"), "--clip-arch", "tiny"]) == 0
    capsys.readouterr()
    # eval reloads the recorded weights with the recorded architecture
    assert main(["eval", "--checkpoint", str(tmp_path / "r2"), "--dataset", "eurosat", "--data-root", str(root),
                 "--subsample", "new", "--num-workers", "0", "--no-progress"]) == 0
    assert "top-1" in capsys.readouterr().out
    image = next((root / "eurosat").rglob("*.jpg"))
    assert main(["predict", "--method", "zeroshot", "--clip", str(bare), "--clip-arch", "tiny", "--classes", "a,b",
                 str(image)]) == 0
    assert main(["predict", "--checkpoint", str(tmp_path / "r2"), "--classes", "a,b", str(image)]) == 0
    capsys.readouterr()
    code = main(["benchmark", "base2novel", "--method", "coop", "--datasets", "eurosat", "--data-root", str(root),
                 "--clip", str(bare), "--clip-arch", "tiny", "--output", str(tmp_path / "sweep")])
    assert code == 2 and "a sweep loads its CLIP once" in capsys.readouterr().err


def test_plugin_presets_are_listed_named_and_in_the_demo(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin's preset files (its table row's presets) are presets like the shipped ones."""
    import sys as _sys

    from mmprompt.config import list_presets, load_config
    from mmprompt.demo.protocol import all_demo_methods
    from mmprompt.methods import register, unregister

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugin_probe"))
    _sys.modules.pop("mmprompt_probe", None)
    import mmprompt_probe

    assert "probe_b2n" not in list_presets()
    register(mmprompt_probe.SPEC)
    try:
        assert "probe_b2n" in list_presets()
        assert load_config("probe_b2n").method.name == "probe"
        assert main(["train", "--list-presets"]) == 0
        assert any(line.startswith("probe_b2n") for line in capsys.readouterr().out.splitlines())
        args = _parse("train", "--config", "probe_b2n", "--dataset", "mmprompt_demo")
        from mmprompt.commands.train import resolve_config

        assert resolve_config(args, "mmprompt_demo").method.name == "probe"
        assert all_demo_methods()[-1] == "probe"
    finally:
        unregister("probe")
    assert "probe_b2n" not in list_presets() and "probe" not in all_demo_methods()


def test_import_official_bad_set_is_a_one_line_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["import-official", str(tmp_path), "--method", "coop", "-o", str(tmp_path / "o"), "--set", "n_ctx"])
    assert code == 2
    assert capsys.readouterr().err.startswith("mmprompt import-official: error (command line): --set expects "
                                              "KEY=VALUE, got 'n_ctx'")


def test_reproduce_takes_the_list_grammar_and_says_where_curves_are(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "maple", "--dry-run", "--shots", "1", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmprompt reproduce: error (command line): reproduce runs one shot count")
    assert "mmprompt benchmark few-shot --shots" in err


@pytest.mark.parametrize("command", [["demo"], ["reproduce", "maple"], ["train"], ["import-official", "d", "--method",
                                                                                    "coop", "-o", "o"]])
def test_set_is_repeatable_everywhere(command: list[str]) -> None:
    args = _parse(*command, "--set", "a=1", "b=2", "--set", "c=3")
    values = getattr(args, "overrides", None) or getattr(args, "set", None)
    assert values == ["a=1", "b=2", "c=3"]
