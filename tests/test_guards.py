import pytest
import torch

from int8lab import Int8RangeError, Net, check_int_range, install_int8_guards
from int8lab.checks import MISCONCEPTIONS


def test_integers_in_range_pass():
    check_int_range(torch.tensor([-128.0, 0.0, 127.0]), "conv1")


@pytest.mark.parametrize(
    ("values", "expected_words"),
    [
        (torch.tensor([-3.0, 16129.0]), ["conv1", "-3", "1.613e+04", MISCONCEPTIONS["multiplied_scale"]]),
        (torch.tensor([-130.0, 5.0]), ["conv1", "-130", MISCONCEPTIONS["forgot_clamp"]]),
        (torch.tensor([-1.0, 131.0]), ["131", MISCONCEPTIONS["forgot_clamp"]]),
        (torch.tensor([0.0, 255.0]), ["255", MISCONCEPTIONS["clamp_unsigned"]]),
        (torch.tensor([0.0, 153.0]), ["153", MISCONCEPTIONS["forgot_clamp"]]),
        (torch.tensor([0.4, 2.5]), ["non-integer", MISCONCEPTIONS["forgot_round"]]),
        (torch.tensor([float("nan"), 1.0]), ["NaN", "0/0"]),  # NaN has more than one cause: no single name
        (torch.tensor([float("inf"), 1.0]), ["scale of 0"]),
    ],
)
def test_error_names_layer_range_and_misconception(values, expected_words):
    with pytest.raises(Int8RangeError) as error:
        check_int_range(values, "conv1")
    for word in expected_words:
        assert word in str(error.value), (word, str(error.value))


def test_installed_guards_stop_the_forward_pass_at_the_offending_layer():
    net = Net()
    handles = install_int8_guards(net)
    with pytest.raises(Int8RangeError, match="(?s)input to conv1 .*clamp after rounding"):
        net(torch.full((1, 1, 32, 32), -200.0))
    for handle in handles:
        handle.remove()
    net(torch.full((1, 1, 32, 32), -200.0))


def test_guard_reports_a_later_layer_by_name():
    net = Net()
    with torch.no_grad():
        net.conv1.weight.fill_(0.01)  # integer input, non-integer conv1 output -> fed to conv2
    install_int8_guards(net)
    with pytest.raises(Int8RangeError, match=r"input to conv2 in Net\.forward holds non-integer"):
        net(torch.ones(1, 1, 32, 32))
