"""Stand-in for ``torchvision.transforms`` covering what Qwen-VL's ``visual.py`` uses on PIL images.

``Resize((h, w), BICUBIC)`` on a PIL image is ``PIL.Image.resize((w, h), Image.BICUBIC)`` (what torchvision
does for PIL input); ``ToTensor`` gives float32 (C, H, W) in [0, 1]; ``Normalize`` is (x - mean) / std.
"""
from __future__ import annotations

from enum import Enum

import numpy as np
import torch


class InterpolationMode(Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
        if not isinstance(size, (tuple, list)) or len(size) != 2:
            raise NotImplementedError("stand-in Resize only takes an explicit (height, width)")
        self.size = (int(size[0]), int(size[1]))
        self.interpolation = interpolation

    def __call__(self, image):
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise NotImplementedError("stand-in Resize only takes PIL images")
        resample = {InterpolationMode.BICUBIC: Image.BICUBIC, InterpolationMode.BILINEAR: Image.BILINEAR,
                    InterpolationMode.NEAREST: Image.NEAREST}[self.interpolation]
        return image.resize((self.size[1], self.size[0]), resample)


class ToTensor:
    def __call__(self, image):
        array = np.asarray(image, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255.0)


class Normalize:
    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, tensor):
        return (tensor - self.mean.to(tensor.dtype)) / self.std.to(tensor.dtype)
