"""The comparison helpers: they pass exact answers, and their messages say what differs and why."""

import math

import numpy as np
import pytest
import torch

from int8lab.checks import MISCONCEPTIONS, CheckFailed, check_close, check_scale, matching_misconception


def test_equal_values_pass_and_nan_matches_nan():
    check_close("f(x)", torch.tensor([1.0, float("nan")]), np.array([1.0, float("nan")]))
    check_scale("s", 0.5, 0.5)


def test_message_shows_expected_and_got():
    with pytest.raises(CheckFailed, match=r"f\(x\): expected \[1, 2\], got \[1, 3\]"):
        check_close("f(x)", [1.0, 3.0], [1.0, 2.0])


def test_shape_mismatch_is_reported_as_such():
    with pytest.raises(CheckFailed, match=r"expected shape \(2,\), got shape \(3,\)"):
        check_close("f(x)", [1.0, 2.0, 3.0], [1.0, 2.0])


@pytest.mark.parametrize(
    ("got", "expected", "key"),
    [
        ([-127.0, 5.0], [-128.0, 5.0], "clamp_127"),
        ([0.0, 5.0], [-3.0, 5.0], "clamp_unsigned"),
        ([-130.0, 5.0], [-128.0, 5.0], "no_clamp"),
        ([3.0, -2.0], [4.0, -1.0], "floor_not_round"),
        ([float("nan"), 0.0], [0.0, 0.0], "zero_scale"),
    ],
)
def test_integer_mistakes_are_recognised(got, expected, key):
    with pytest.raises(CheckFailed) as error:
        check_close("q", got, expected)
    assert MISCONCEPTIONS[key] in str(error.value)


def test_int8_rules_stay_out_of_int32_results():
    with pytest.raises(CheckFailed) as error:
        check_close("bias", [2499.0], [2500.0])
    assert "known misconception" not in str(error.value)


def test_scale_mistakes_are_recognised():
    for got, expected, key in [
        (127.0, 1 / 127, "inverse_scale"),
        (0.0, 1.0, "zero_scale"),
        (math.nan, 1.0, "zero_scale"),
    ]:
        with pytest.raises(CheckFailed) as error:
            check_scale("s", got, expected)
        assert MISCONCEPTIONS[key] in str(error.value), got


def test_a_zero_scale_for_a_non_zero_input_is_not_called_the_all_zero_case():
    with pytest.raises(CheckFailed) as error:
        check_scale("quantized_weights(tensor([-0.37]))[1]", 0.0, 0.37 / 127)
    assert MISCONCEPTIONS["zero_scale"] not in str(error.value)
    with pytest.raises(CheckFailed, match="expected a float scale"):
        check_scale("s", None, 0.1)


def test_candidates_accept_several_forms_of_one_misconception():
    candidates = [("relu_misplaced", [0.0, 1.0]), ("relu_misplaced", [2.0, 1.0])]
    assert matching_misconception([2.0, 1.0], candidates) == "relu_misplaced"
    assert matching_misconception([5.0, 1.0], candidates) is None
