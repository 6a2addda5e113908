"""The two networks in plain PyTorch, with the tutorial's class layout so state_dict keys match its
code: the one definition the server trains and the client loads. Imports torch: only load_model
(and the server's trainers) import this module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FC2Layer(nn.Module):
    def __init__(self, input_size: int, n_hidden: int, output_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.network = nn.Sequential(
            nn.Linear(input_size, n_hidden),
            nn.ReLU(),
            nn.Linear(n_hidden, n_hidden),
            nn.ReLU(),
            nn.Linear(n_hidden, output_size),
            nn.LogSoftmax(dim=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.network(x.view(-1, self.input_size))
        return out


class CNN(nn.Module):
    def __init__(self, input_size: int, n_feature: int, output_size: int) -> None:
        super().__init__()
        self.n_feature = n_feature
        self.conv1 = nn.Conv2d(in_channels=1, out_channels=n_feature, kernel_size=5)
        self.conv2 = nn.Conv2d(n_feature, n_feature, kernel_size=5)
        self.fc1 = nn.Linear(n_feature * 4 * 4, 50)
        self.fc2 = nn.Linear(50, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), kernel_size=2)
        x = F.max_pool2d(F.relu(self.conv2(x)), kernel_size=2)
        x = x.view(-1, self.n_feature * 4 * 4)
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)
