"""Train the demo model: a small CNN on scikit-learn's handwritten digits, saved as TorchScript.

The data set ships inside scikit-learn (1,797 8x8 scans), so the demo's answers mean something
without downloading anything. Training images go through the same preprocessing the manifest
declares (torchvision's, which lambdatorch reproduces), so the model sees at serving time what it
saw in training. Takes a few seconds on one CPU.

Usage: python demo/train_digits.py OUT_DIR   (writes model.pt, labels.txt, samples/*.png)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.transforms import v2

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SIZE = 32
# The preprocessing below is the one demo/digits.json declares.


def render(digit: np.ndarray) -> Image.Image:
    """An 8x8 scan (0-16) as a 96x96 dark-on-light image, like a digit photographed on paper."""
    ink = (digit * (255 / 16)).astype(np.uint8)
    return Image.fromarray(255 - ink, mode="L").resize((96, 96), Image.Resampling.BICUBIC)


def preprocess() -> v2.Compose:
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((SIZE, SIZE), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5], [0.5]),
        ]
    )


class DigitNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(32 * 8 * 8, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    digits = load_digits()
    transform = preprocess()
    images = [render(d) for d in digits.images]
    x = torch.stack([transform(im) for im in images])
    y = torch.tensor(digits.target)
    # Hold out every 10th image: the demo predicts some of them.
    test = torch.arange(len(y)) % 10 == 0
    model = DigitNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _epoch in range(12):
        order = torch.randperm(int((~test).sum()))
        xs, ys = x[~test][order], y[~test][order]
        for i in range(0, len(ys), 64):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xs[i : i + 64]), ys[i : i + 64])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    print(f"digits model: held-out accuracy {accuracy:.1%} on {int(test.sum())} images")
    torch.jit.trace(model, x[:1]).save(str(out / "model.pt"))
    (out / "labels.txt").write_text("\n".join(LABELS) + "\n")
    samples = out / "samples"
    samples.mkdir(exist_ok=True)
    held_out = torch.nonzero(test).flatten().tolist()
    for digit in (3, 7, 0, 5, 9, 2):  # one held-out scan of each of these digits
        index = next(i for i in held_out if digits.target[i] == digit)
        images[index].save(samples / f"{LABELS[digit]}_{index}.png")


if __name__ == "__main__":
    main()
