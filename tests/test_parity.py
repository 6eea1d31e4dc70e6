"""Parity with the official implementation, from the numbers in tests/data (copied from shared/parity)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmprompt.cli import main
from mmprompt.parity import load_reference, run_parity

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "official_reference.npz"
CASES = ["clip", *json.loads(REFERENCE.with_suffix(".json").read_text())["cases"]]
# Every reference file in tests/data (copied from shared/parity): the original seven methods and each
# successor's own file. A method added with its reference file is checked here without editing this test.
ALL_CASES = [
    pytest.param(path, case, id=f"{path.stem.removesuffix('_reference')}:{case}")
    for path in sorted(DATA.glob("*_reference.npz"))
    for case in load_reference(path).cases
]


@pytest.mark.parametrize("path,case", ALL_CASES)
def test_every_reference_case_matches(path: Path, case: str) -> None:
    (result,) = run_parity(path, [case])
    assert not result.error, result.error
    assert result.checks, "a case must check at least one tensor"
    bad = [(c.name, c.max_rel, c.note) for c in result.checks if not c.ok]
    assert not bad, bad
    if case != "clip":  # every official gradient and loss term is compared, and nothing else is trainable
        ref = load_reference(path)
        names = {c.name for c in result.checks}
        checked = {n.removeprefix("grad/") for n in names if n.startswith("grad/")}
        expected = {k.split("/", 2)[2] for k in ref.arrays if k.startswith(f"{case}/grad/")}
        assert checked == expected
        assert {"logits", "loss"} <= names
        terms = {k.split("/", 1)[1] for k in ref.arrays if k.startswith(f"{case}/loss_terms/")}
        assert terms <= names


@pytest.mark.parametrize(
    "flags",
    [[], ["--text-chunk-size", "2"], ["--no-truncate-text"], ["--no-shared-prefix"],
     ["--no-truncate-text", "--no-shared-prefix"]],
)
def test_parity_command_passes_with_each_path(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parity", "--reference", str(REFERENCE), *flags]) == 0
    out = capsys.readouterr().out
    assert f"{len(CASES)} of {len(CASES)} cases pass" in out
    assert "max rel err" in out


def test_parity_command_fails_on_unknown_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parity", "--reference", str(REFERENCE), "--case", "clip", "--case", "no_such_case"]) == 1
    assert "CANNOT CHECK" in capsys.readouterr().out


def test_parity_command_fails_on_a_mismatch(tmp_path: Path) -> None:
    import numpy as np

    ref = load_reference(REFERENCE)
    arrays = dict(ref.arrays)
    arrays["maple/logits"] = arrays["maple/logits"] * 1.01
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    bad.with_suffix(".json").write_text(json.dumps(ref.meta))
    assert main(["parity", "--reference", str(bad), "--case", "maple"]) == 1
    (result,) = run_parity(bad, ["maple"])
    assert [c.name for c in result.checks if not c.ok] == ["logits"]


def test_other_configurations_are_read_from_the_json(tmp_path: Path) -> None:
    """A file whose JSON declares another configuration is built with it (here: a wrong depth fails)."""
    import numpy as np

    ref = load_reference(REFERENCE)
    meta = json.loads(json.dumps(ref.meta))
    meta["cases"] = {"maple": meta["cases"]["maple"]}
    meta["cases"]["maple"]["official_config"]["PROMPT_DEPTH"] = 3
    path = tmp_path / "other.npz"
    np.savez(path, **ref.arrays)
    path.with_suffix(".json").write_text(json.dumps(meta))
    (result,) = run_parity(path, ["maple"])
    assert not result.ok  # depth 3 has fewer parameters than the stored depth-9 case
    assert "unexpected" in result.error
