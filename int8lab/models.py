"""The lab's float networks: the original CIFAR-10 CNN, with the input channels made a parameter."""

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Layer names in forward order; profiling, plots and the notebooks all iterate over them.
LAYER_NAMES = ("conv1", "conv2", "fc1", "fc2", "fc3")


class Net(nn.Module):
    """conv1(6, 5x5) -> ReLU -> pool -> conv2(16, 5x5) -> ReLU -> pool -> fc1 120 -> fc2 84 -> fc3 10.

    No layer has a bias, so that the first notebooks quantize weights and activations only.

    Args:
        in_channels: 1 for the embedded digits data, 3 for CIFAR-10.

    Input: float32 tensor of shape (N, in_channels, 32, 32) with values in [-1, 1].
    Output: float32 logits of shape (N, 10).
    """

    fc3_bias = False

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 6, 5, bias=False)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5, bias=False)
        self.fc1 = nn.Linear(16 * 5 * 5, 120, bias=False)
        self.fc2 = nn.Linear(120, 84, bias=False)
        self.fc3 = nn.Linear(84, 10, bias=self.fc3_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class NetWithBias(Net):
    """`Net` with a bias on fc3 only: the layer the bias notebook quantizes to int32."""

    fc3_bias = True


class NetBN(Net):
    """`Net` with a BatchNorm after each convolution: conv -> BN -> ReLU -> pool, for the QAT notebook.

    The convolutions have no bias (BN's shift takes its place); folding BN into them (notebook 7) gives each
    convolution a bias. The linear layers are `Net`'s.

    Input: float32 tensor of shape (N, in_channels, 32, 32) with values in [-1, 1].
    Output: float32 logits of shape (N, 10).
    """

    def __init__(self, in_channels: int = 1):
        super().__init__(in_channels)
        self.bn1 = nn.BatchNorm2d(6)
        self.bn2 = nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)
