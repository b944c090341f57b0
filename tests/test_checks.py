"""The comparison helpers: they pass exact answers, and their messages say what differs and why."""

import math

import numpy as np
import pytest
import torch

from int8lab.checks import (
    MISCONCEPTIONS,
    CheckFailed,
    check_choice,
    check_close,
    check_codes,
    check_scale,
    check_true,
    matching_misconception,
)


def test_equal_values_pass_and_nan_matches_nan():
    check_close("f(x)", torch.tensor([1.0, float("nan")]), np.array([1.0, float("nan")]))
    check_scale("s", 0.5, 0.5)


def test_message_shows_expected_and_got():
    with pytest.raises(CheckFailed, match=r"f\(x\): 1 of 2 values differ; .*expected \[1, 2\], got \[1, 3\]"):
        check_close("f(x)", [1.0, 3.0], [1.0, 2.0])


@pytest.mark.parametrize(
    ("got", "expected", "shown"),
    [
        ((1288490188, 32), (1288490189, 32), "expected 1288490189, got 1288490188"),  # integers in full
        ([0.36000001], [0.36], "expected 0.36, got 0.36000001"),  # as many digits as it takes
        (
            np.arange(100.0) + (np.arange(100) == 57),
            np.arange(100.0),
            "1 of 100 values differ; the first at index [57]",
        ),
    ],
)
def test_a_failure_shows_the_values_that_differ_never_identical_previews(got, expected, shown):
    with pytest.raises(CheckFailed) as error:
        check_close("f(x)", got, expected, rtol=0, atol=0)
    assert shown in str(error.value)


def test_the_first_difference_shows_its_input():
    with pytest.raises(CheckFailed, match=r"at index \[1, 0\] \(input -2.5\): expected -3, got -2"):
        check_close("q", [[1.0, 2.0], [-2.0, 0.0]], [[1.0, 2.0], [-3.0, 0.0]], inputs=[[1.0, 2.0], [-2.5, 0.0]])


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


@pytest.mark.parametrize(
    ("got", "expected", "not_key"),
    [
        ([0.0, 0.0, 0.0], [-3.0, 5.0, 2.0], "clamp_unsigned"),  # all zeros: swapped arguments, not a [0, 255] clamp
        ([-2.0, 3.0, -4.0, 4.0], [-3.0, 3.0, -4.0, 4.0], "floor_not_round"),  # -2.5 -> -2: a tie, not a floor
        ([float("nan")], [2.5], "zero_scale"),  # a one-element sample std, not the all-zero case
    ],
)
def test_a_mistake_is_not_named_where_the_values_lack_its_signature(got, expected, not_key):
    with pytest.raises(CheckFailed) as error:
        check_close("q", got, expected)
    assert MISCONCEPTIONS[not_key] not in str(error.value)


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


def test_wrong_answers_given_as_a_function_are_computed_only_for_a_value_that_fails():
    calls = []

    def known_mistakes():
        calls.append(1)
        return [("relu_misplaced", [0.0, 1.0])]

    check_close("f(x)", [2.0, 1.0], [2.0, 1.0], known_mistakes)
    check_true(True, "f(x) is wrong", lambda: matching_misconception([2.0, 1.0], known_mistakes))
    assert calls == []
    with pytest.raises(CheckFailed, match=MISCONCEPTIONS["relu_misplaced"][:40]):
        check_close("f(x)", [0.0, 1.0], [2.0, 1.0], known_mistakes)
    with pytest.raises(CheckFailed, match=MISCONCEPTIONS["relu_misplaced"][:40]):
        check_true(False, "f(x) is wrong", lambda: matching_misconception([0.0, 1.0], known_mistakes))
    assert calls == [1, 1]


@pytest.mark.parametrize("got", ["b", "B", " b ", "(b)", "b)", "B."])
def test_a_choice_ignores_case_spaces_and_brackets(got):
    check_choice("choice_x", got, "b")


def test_a_wrong_choice_names_the_option_chosen_and_why_it_is_wrong_never_the_right_one():
    wrong = {"a": "A 31-bit m0 is finer than that.", "c": "Not both."}
    with pytest.raises(CheckFailed) as error:
        check_choice("choice_x", "A", "b", wrong)
    message = str(error.value)
    assert 'you chose "a"' in message and "A 31-bit m0 is finer than that." in message
    assert '"b"' not in message and "Not both." not in message and "\n" not in message
    with pytest.raises(CheckFailed) as error:
        check_choice("choice_x", "d", "b", wrong)  # an option without a known reason
    assert 'you chose "d"' in str(error.value) and '"b"' not in str(error.value)


@pytest.mark.parametrize("got", [None, 2, "", "  ", "()", ["b"]])
def test_a_choice_that_is_not_a_letter_says_what_is_expected(got):
    with pytest.raises(CheckFailed, match="expected the letter of one option as a string"):
        check_choice("choice_x", got, "b")


def test_codes_may_differ_by_one_only_where_the_exact_quotient_is_a_hair_from_a_tie():
    """A float32 quotient lands within about 2**-23 of the float64 one: at a near tie it may round the other way."""
    exact = np.array([2.5 + 2.0**-40, 7.2, -3.5 - 2.0**-45, 130.4])  # two near ties, then a clamped value
    check_codes("q", [3, 7, -4, 127], exact, -128, 127)  # the float64 rounding
    check_codes("q", [2, 7, -3, 127], exact, -128, 127)  # the other side of both near ties: no failure
    with pytest.raises(CheckFailed, match="expected 8, got 7"):  # 7.6 is no near tie
        check_codes("q", [3, 7, -4, 127], [2.5, 7.6, -3.5, 130.4], -128, 127)
    with pytest.raises(CheckFailed, match="expected 3, got 1"):  # a near tie accepts its two neighbours only
        check_codes("q", [1, 7, -4, 127], exact, -128, 127)


def test_a_code_one_below_at_a_near_tie_is_not_called_floored():
    """One code one below where the quotient is a hair above a tie, and one more below elsewhere: the failure names
    no rounding mistake, since an honest float32 computation can give the first."""
    exact = np.array([2.5 + 2.0**-40, 6.7, 9.7])
    with pytest.raises(CheckFailed) as error:
        check_codes("q", [2, 6, 10], exact, -128, 127)
    assert MISCONCEPTIONS["floor_not_round"] not in str(error.value)
    with pytest.raises(CheckFailed) as error:  # without the near tie, the same pattern is floor's
        check_codes("q", [3, 6, 9], exact, -128, 127)
    assert MISCONCEPTIONS["floor_not_round"] in str(error.value)
