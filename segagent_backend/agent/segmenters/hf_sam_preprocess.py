"""Image preprocessing for the transformers SAM family, with or without the stock image processors.

Two geometries, read from the model's ``preprocessor_config.json``:

* **longest side + pad** (``sam``, ``sam_hq``; ``size = {"longest_edge": S}``): the image is resized so its
  long side is S (aspect kept, sides rounded half up), rescaled, normalised, then zero-padded at the
  bottom / right to ``pad_size`` (S x S). The stock PIL processor (``SamImageProcessorPil``) runs without
  torchvision, so :class:`StockPreprocessor` wraps it; :class:`OwnPreprocessor` reproduces it with PIL.
* **square** (``sam2``, ``sam3_tracker``, ``edgetam``; ``size = {"height": S, "width": S}``): the image is
  resized to S x S (aspect not kept), rescaled and normalised, never padded. The stock processors
  (``Sam2ImageProcessor``, ``Sam3ImageProcessor``) import torchvision, so :class:`OwnPreprocessor` does
  it with torch alone, the way torchvision does on the CPU (antialiased bilinear on uint8).

Everything here is (row, col) = (y, x) for sizes and (x, y) for points, as in transformers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PreprocessSpec", "PreparedImage", "ImagePreprocessor", "OwnPreprocessor", "StockPreprocessor"]

IMAGENET_DEFAULT = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET_STANDARD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_BILINEAR = 2  # PILImageResampling.BILINEAR, the only resampling the SAM family's processors use


@dataclass(frozen=True)
class PreprocessSpec:
    """What one model's processor does to an image.

    square:     True: resize to ``size`` (h, w) without keeping the aspect (SAM 2 family); False: resize the
                long side to ``size[0]`` keeping the aspect, then pad to ``pad_size`` (SAM).
    size:       (h, w) of the square resize, or (S, S) with S the longest edge.
    pad_size:   (h, w) the resized image is zero-padded to (bottom / right), or None.
    mean, std:  per-channel (R, G, B) normalisation after rescaling.
    """

    square: bool
    size: tuple[int, int]
    pad_size: Optional[tuple[int, int]]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, square: bool, side: int,
                    defaults: tuple[tuple[float, ...], tuple[float, ...]] = IMAGENET_DEFAULT) -> "PreprocessSpec":
        """From a ``preprocessor_config.json`` dict; missing keys take the family's defaults (``side``: the
        model's input side, ``defaults``: (mean, std)). Raises ValueError for a geometry or resampling
        this module does not reproduce."""
        resample = config.get("resample", _BILINEAR)
        if resample not in (None, _BILINEAR):
            raise ValueError(f"image processor resample={resample!r}: only bilinear (2) is supported")
        size = dict(config.get("size") or {})
        mean = tuple(float(v) for v in (config.get("image_mean") or defaults[0]))
        std = tuple(float(v) for v in (config.get("image_std") or defaults[1]))
        common = dict(mean=mean, std=std, rescale_factor=float(config.get("rescale_factor") or 1 / 255),
                      do_resize=bool(config.get("do_resize", True)), do_rescale=bool(config.get("do_rescale", True)),
                      do_normalize=bool(config.get("do_normalize", True)))
        if square:
            if "longest_edge" in size:
                raise ValueError(f"a SAM 2-family processor resizes to a square, got size={size}")
            hw = (int(size.get("height", side)), int(size.get("width", side)))
            return cls(square=True, size=hw, pad_size=None, **common)
        if "height" in size and "longest_edge" not in size:
            raise ValueError(f"a SAM processor resizes the longest edge, got size={size}")
        longest = int(size.get("longest_edge", side))
        pad = dict(config.get("pad_size") or {"height": longest, "width": longest})
        pad_size = (int(pad["height"]), int(pad["width"])) if config.get("do_pad", True) else None
        return cls(square=False, size=(longest, longest), pad_size=pad_size, **common)

    def resized_size(self, original: tuple[int, int]) -> tuple[int, int]:
        """(h', w') of an (H, W) image after the resize (before padding)."""
        if not self.do_resize:
            return original
        if self.square:
            return self.size
        h, w = original
        scale = self.size[0] / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass(frozen=True)
class PreparedImage:
    """pixel_values: (1, 3, h, w) float32 on the CPU (h, w = pad_size, or the square size);
    original_size: (H, W) of the image; input_size: (h', w') after resizing, before padding."""

    pixel_values: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class ImagePreprocessor:
    """Image -> pixel values, clicks -> the model's input frame, low-res logits -> the original size."""

    spec: PreprocessSpec
    #: the stock transformers processor (``SamProcessor``...) when this one wraps it, else None
    processor: Optional[Any] = None

    def __call__(self, image: np.ndarray) -> PreparedImage:  # pragma: no cover - abstract
        """``image``: (H, W, 3) uint8 RGB."""
        raise NotImplementedError

    @staticmethod
    def to_input_frame(xy: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
        """(..., 2) float x, y in original pixels -> x, y in the resized image the model sees (the frame its
        prompt encoder normalises by): x * w'/W, y * h'/H."""
        (oh, ow), (rh, rw) = original_size, input_size
        return xy * np.array([rw / ow, rh / oh])

    def upscale(self, logits: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
        """Low-res logits (1, 1, h, w) -> (H, W) bool mask (logit > 0) of the original image, as the stock
        ``post_process_masks`` does: SAM resizes to the padded frame, crops the padding, then resizes to
        (H, W); the square family resizes straight to (H, W)."""
        x = logits.float()
        if self.spec.pad_size is not None:
            x = F.interpolate(x, self.spec.pad_size, mode="bilinear", align_corners=False)
            x = x[..., : input_size[0], : input_size[1]]
        x = F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)
        return (x[0, 0] > 0).cpu().numpy()


def _resize_uint8_like_torchvision(chw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, 3, H, W) uint8 -> (1, 3, h, w) uint8, antialiased bilinear, as ``torchvision...resize`` computes it
    on the CPU: natively on uint8 where torch has the AVX2 kernel, else in float32 then rounded."""
    if "AVX2" in torch.backends.cpu.get_cpu_capability():
        return F.interpolate(chw, size=size, mode="bilinear", align_corners=False, antialias=True)
    out = F.interpolate(chw.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.round_().to(torch.uint8)


class OwnPreprocessor(ImagePreprocessor):
    """The processor config reproduced without torchvision (see the module docstring)."""

    def __init__(self, spec: PreprocessSpec):
        self.spec = spec

    def __call__(self, image: np.ndarray) -> PreparedImage:
        spec = self.spec
        original = (int(image.shape[0]), int(image.shape[1]))
        resized_hw = spec.resized_size(original)
        if resized_hw == original:
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        elif spec.square:
            x = _resize_uint8_like_torchvision(torch.from_numpy(image).permute(2, 0, 1).contiguous()[None], resized_hw)
        else:  # the stock SAM processor resizes with PIL: the same call gives the same pixels
            from PIL import Image

            pil = Image.fromarray(np.ascontiguousarray(image)).resize((resized_hw[1], resized_hw[0]), Image.BILINEAR)
            x = torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None]
        x = x.to(torch.float32)
        if spec.do_rescale:
            x = x * spec.rescale_factor
        if spec.do_normalize:
            mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
            x = (x - mean) / std
        if spec.pad_size is not None:
            ph, pw = spec.pad_size
            if ph < x.shape[2] or pw < x.shape[3]:
                raise ValueError(f"pad_size {spec.pad_size} is smaller than the resized image {tuple(x.shape[2:])}")
            x = F.pad(x, (0, pw - x.shape[3], 0, ph - x.shape[2]))
        return PreparedImage(pixel_values=x.contiguous(), original_size=original, input_size=resized_hw)


class StockPreprocessor(ImagePreprocessor):
    """A stock ``SamProcessor`` / ``SamHQProcessor`` (PIL backend) that runs here: used as is."""

    def __init__(self, processor: Any, spec: PreprocessSpec):
        self.processor = processor
        self.spec = spec

    def __call__(self, image: np.ndarray) -> PreparedImage:
        # channels_last stated explicitly: inference from the shape is ambiguous for an image 3 pixels high
        inputs = self.processor(images=image, input_data_format="channels_last", return_tensors="pt")
        return PreparedImage(
            pixel_values=inputs["pixel_values"],
            original_size=tuple(int(v) for v in inputs["original_sizes"][0]),
            input_size=tuple(int(v) for v in inputs["reshaped_input_sizes"][0]),
        )

    def upscale(self, logits: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
        full = self.processor.post_process_masks([logits.float()], [original_size], [input_size], binarize=True)[0]
        return full[0, 0].cpu().numpy().astype(bool, copy=False)
