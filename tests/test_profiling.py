import numpy as np
import torch
import torch.nn.functional as F

from int8lab import profile_activations

EXPECTED_SHAPES = {
    "input": (1, 32, 32),
    "conv1": (6, 14, 14),
    "conv2": (400,),
    "fc1": (120,),
    "fc2": (84,),
    "fc3": (10,),
}


def test_six_keys_with_one_row_per_profiled_image(float_net, digits_loaders):
    activations = profile_activations(float_net, digits_loaders[0], max_samples=400)
    assert set(activations) == set(EXPECTED_SHAPES)
    for key, shape in EXPECTED_SHAPES.items():
        assert activations[key].shape == (400, *shape), key
        assert activations[key].dtype == np.float32, key


def test_values_match_a_hand_written_forward_pass(float_net, digits_loaders):
    """PyTorch as the oracle: each key is the next layer's input (after ReLU and pooling), fc3 raw."""
    activations = profile_activations(float_net, digits_loaders[0], max_samples=70)
    images = torch.from_numpy(activations["input"])
    net = float_net
    with torch.no_grad():
        conv1 = F.max_pool2d(F.relu(net.conv1(images)), 2)
        conv2 = F.max_pool2d(F.relu(net.conv2(conv1)), 2).flatten(1)
        fc1 = F.relu(net.fc1(conv2))
        fc2 = F.relu(net.fc2(fc1))
        fc3 = net.fc3(fc2)
    for key, expected in {"conv1": conv1, "conv2": conv2, "fc1": fc1, "fc2": fc2, "fc3": fc3}.items():
        np.testing.assert_allclose(activations[key], expected.numpy(), rtol=1e-5, atol=1e-5, err_msg=key)
    assert (activations["fc3"] < 0).any(), "fc3 must be recorded before any ReLU"


def test_hooks_are_removed_and_mode_restored(float_net, digits_loaders):
    float_net.train()
    try:
        profile_activations(float_net, digits_loaders[1], max_samples=5)
        assert float_net.training, "the model's train/eval mode must be restored"
    finally:
        float_net.eval()
    for module in float_net.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_fewer_images_than_asked_returns_what_there_is(float_net, digits_loaders):
    activations = profile_activations(float_net, digits_loaders[1], max_samples=10_000)
    assert activations["fc3"].shape[0] == len(digits_loaders[1].dataset)
