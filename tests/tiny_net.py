"""A few-thousand-parameter CNN as a user model file (``tests/tiny_net.py:Tiny``): the fault tests
train it through the CLI in a fraction of a second per epoch."""

from torch import nn


class Tiny(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))
