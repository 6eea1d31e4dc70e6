"""mmprompt.checks: the one set of config-value checks used by the run config and every method."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmprompt.checks import ConfigError, check_bool, check_int, check_number, is_number
from mmprompt.config import load_config


@given(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
def test_finite_numbers_pass_and_come_back_as_float(value: float) -> None:
    out = check_number("x.y", value)
    assert isinstance(out, float) and out == float(value)


@pytest.mark.parametrize("value", [True, False, "1", None, [1], math.nan, math.inf, -math.inf])
def test_non_numbers_are_refused_naming_the_field(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^x\.y must be a number, got "):
        check_number("x.y", value)
    assert not is_number(value) or not math.isfinite(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        (0, {"above": 0}, "x must be a positive number, got 0"),
        (-0.5, {"minimum": 0}, "x must be a number >= 0, got -0.5"),
        (1.5, {"minimum": 0, "maximum": 1}, "x must be a number >= 0 and <= 1, got 1.5"),
        (2, {"above": 1}, None),
        (1, {"minimum": 0, "maximum": 1}, None),
    ],
)
def test_number_bounds(value: float, bounds: dict, message: str | None) -> None:
    if message is None:
        assert check_number("x", value, **bounds) == float(value)
    else:
        with pytest.raises(ConfigError) as err:
            check_number("x", value, **bounds)
        assert str(err.value) == message


def test_integers_and_bools() -> None:
    assert check_int("n", 3, minimum=1) == 3
    for bad in (True, 2.0, "2", None):
        with pytest.raises(ConfigError, match=r"^n must be an integer >= 1, got "):
            check_int("n", bad, minimum=1)
    with pytest.raises(ConfigError, match=r"^n must be an integer >= 1, got 0$"):
        check_int("n", 0, minimum=1)
    assert check_bool("b", False) is False
    for bad in (0, 1, "true", None):
        with pytest.raises(ConfigError, match=r"^b must be true or false, got "):
            check_bool("b", bad)


@pytest.mark.parametrize(
    ("preset", "override", "message"),
    [
        ("maple_b2n", {"optim.epochs": 0}, "optim: optim.epochs must be an integer >= 1, got 0"),
        ("maple_b2n", {"optim.lr": "fast"}, "optim: optim.lr must be a positive number, got 'fast'"),
        ("maple_b2n", {"data.crop_scale_min": 0}, "data: data.crop_scale_min must be a number > 0 and <= 1, got 0"),
        ("maple_b2n", {"encoder.truncate_text": 1}, "encoder: encoder.truncate_text must be true or false, got 1"),
        ("promptsrc_b2n", {"method.gpa_std": 0}, "method: promptsrc.gpa_std must be a positive number, got 0"),
        ("mma_b2n", {"method.adapter_dim": 0}, "method: mma.adapter_dim must be an integer >= 1, got 0"),
        ("dept_coop_b2n", {"method.weight": 2}, "method: dept.weight must be a number >= 0 and <= 1, got 2"),
        ("prograd_b2n", {"method.class_specific": "no"}, "method: prograd.class_specific must be true or false"),
        ("kgcoop_b2n", {"method.weight": True}, "method: kgcoop.weight must be a number >= 0, got True"),
    ],
)
def test_config_and_method_options_use_the_same_checks(preset: str, override: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(preset, override)
    assert str(err.value).startswith(message)


def test_one_tower_variants_refuse_the_other_tower() -> None:
    with pytest.raises(ConfigError, match="VPT has prompts in the vision tower only: n_ctx_text and depth_text"):
        load_config("vpt_b2n", {"method.n_ctx_text": 2})
    with pytest.raises(ConfigError, match="language-only prompting needs n_ctx_text >= 1"):
        load_config("language_b2n", {"method.n_ctx_text": 0})
