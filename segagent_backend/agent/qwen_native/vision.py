"""Qwen-VL-Chat's vision tower, written natively: ViT + 256-query cross-attention resampler.

Architecture (sizes from ``config.json``'s ``visual`` block; the 7B release: width 1664, 48 layers, 16 heads,
``mlp_ratio`` 4.9231, ``output_dim`` 4096):

- ``conv1``: patchify, kernel = stride = ``patch_size`` (14), no bias: (B, 3, 448, 448) -> (B, width, 32, 32).
- ``positional_embedding`` (256, width), learned for a 16x16 grid and resized bicubically
  (``align_corners=False``, computed in float32) to the patch grid. No CLS token.
- ``ln_pre``, then ``transformer.resblocks`` (pre-norm blocks, LayerNorm eps 1e-6, exact GELU MLP of width
  ``int(width * mlp_ratio)``). The fused ``attn.in_proj`` is laid out PER HEAD as [q|k|v]: its output is viewed
  as (heads, 3 * head_dim) and split, unlike ``nn.MultiheadAttention``'s [Q;K;V] blocks.
- ``attn_pool`` (resampler): 256 learned queries of width ``output_dim``; keys/values are ``kv_proj``-ed
  (no bias) patch features. q = ln_q(query) + 2-D sin-cos(16x16); k = ln_kv(kv) + sin-cos resized to the
  grid; v = ln_kv(kv); ``nn.MultiheadAttention(output_dim, output_dim // 128)``.
- ``ln_post`` then ``@ proj`` (output_dim x output_dim): (B, 256, output_dim).

Parameter names equal the checkpoint's ``transformer.visual.*`` names with that prefix removed, so a state
dict loads directly.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
LN_EPS = 1e-6


def resize_pos_embed(pos: torch.Tensor, num_positions: int) -> torch.Tensor:
    """(L, C) embedding laid out on a sqrt(L) square grid -> (num_positions, C), bicubic, same dtype.

    Interpolated in float32 (``align_corners=False``) and cast back; returned unchanged when the sizes match.
    """
    src, dst = int(math.sqrt(pos.shape[0])), int(math.sqrt(num_positions))
    if src == dst:
        return pos
    grid = pos.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
    out = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(dst * dst, -1).to(pos.dtype)


def sincos_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """MAE 2-D sin-cos table, (grid_size**2, embed_dim) float32.

    Rows run over (h, w) with w fastest; the first half of the channels encodes the column index (w), the
    second half the row index (h); each half is [sin | cos] over frequencies 1 / 10000**(2i / half).
    """
    if embed_dim % 4:
        raise ValueError(f"sin-cos embedding needs a width divisible by 4, got {embed_dim}")
    half = embed_dim // 2
    omega = 1.0 / 10000 ** (np.arange(half // 2, dtype=np.float32) / (half / 2.0))
    rows, cols = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32),
                             indexing="ij")

    def one(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one(cols), one(rows)], axis=1).astype(np.float32)


class VisualAttention(nn.Module):
    """Self-attention with the per-head fused [q|k|v] ``in_proj`` and ``out_proj``, both with bias.

    Input/output (S, B, width) (sequence first, as in the checkpoint's code).
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, width // heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, b, width = x.shape
        qkv = self.in_proj(x).view(s, b * self.heads, 3 * self.head_dim).transpose(0, 1)  # (B*h, S, 3*hd)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        weights = torch.bmm(q / math.sqrt(self.head_dim), k.transpose(1, 2)).softmax(dim=-1)
        ctx = torch.bmm(weights, v).view(b, self.heads, s, self.head_dim)
        return self.out_proj(ctx.permute(2, 0, 1, 3).reshape(s, b, width))


class ResidualBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)); (S, B, width) in and out."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = VisualAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=LN_EPS)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """``layers`` residual blocks under the checkpoint's name ``resblocks``."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualBlock(width, heads, mlp_ratio) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class Resampler(nn.Module):
    """Cross-attention from ``n_queries`` learned queries to the patch features.

    Input (B, N, kv_dim) with N a square number; output (B, n_queries, embed_dim).
    """

    def __init__(self, n_queries: int, embed_dim: int, kv_dim: int):
        super().__init__()
        grid = int(math.sqrt(n_queries))
        if grid * grid != n_queries:
            raise ValueError(f"n_queries must be a square number, got {n_queries}")
        if embed_dim % 128:
            raise ValueError(f"output_dim must be a multiple of 128 (heads of 128), got {embed_dim}")
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_2d(embed_dim, grid)), requires_grad=False)
        self.query = nn.Parameter(torch.zeros(n_queries, embed_dim))
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim != embed_dim else nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, embed_dim // 128)
        self.ln_q = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key_pos = resize_pos_embed(self.pos_embed, x.shape[1])
        kv = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)                # (N, B, D)
        q = self.ln_q(self.query).unsqueeze(1).expand(-1, kv.shape[1], -1)  # (Q, B, D)
        out = self.attn(q + self.pos_embed.unsqueeze(1), kv + key_pos.unsqueeze(1), kv, need_weights=False)[0]
        return out.permute(1, 0, 2)


class QwenVisionTower(nn.Module):
    """The full tower: pixel_values (B, 3, image_size, image_size) -> features (B, n_queries, output_dim).

    Runs in the dtype of its weights (the input is cast to it); the positional tables are resized in float32.
    """

    def __init__(self, image_size: int = 448, patch_size: int = 14, width: int = 1664, layers: int = 48,
                 heads: int = 16, mlp_ratio: float = 4.9231, output_dim: int = 4096, n_queries: int = 256,
                 **_ignored):
        super().__init__()
        self.image_size, self.patch_size, self.output_dim = image_size, patch_size, output_dim
        self.n_queries = n_queries
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.positional_embedding = nn.Parameter(torch.zeros(256, width))
        self.ln_pre = nn.LayerNorm(width, eps=LN_EPS)
        self.transformer = Transformer(width, layers, heads, mlp_ratio)
        self.attn_pool = Resampler(n_queries, output_dim, width)
        self.ln_post = nn.LayerNorm(output_dim, eps=LN_EPS)
        self.proj = nn.Parameter(torch.zeros(output_dim, output_dim))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.to(dtype=self.conv1.weight.dtype, device=self.conv1.weight.device)
        x = self.conv1(x).flatten(2).transpose(1, 2)                      # (B, grid**2, width)
        x = self.ln_pre(x + resize_pos_embed(self.positional_embedding, x.shape[1]))
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(self.attn_pool(x)) @ self.proj


def preprocess_images(images: Sequence[Union["PIL.Image.Image", np.ndarray, str]],  # noqa: F821
                      image_size: int = 448) -> torch.Tensor:
    """The release's transform: RGB, PIL bicubic resize to image_size^2, /255, CLIP mean/std.

    images: PIL images, HxWx3 uint8 arrays or file paths. Returns float32 (B, 3, image_size, image_size).
    """
    from PIL import Image

    out = []
    for image in images:
        if isinstance(image, str):
            image = Image.open(image)
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(np.ascontiguousarray(image))
        image = image.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
        array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255.0)
        out.append(array)
    pixels = torch.stack(out)
    mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGE_STD, dtype=torch.float32)[:, None, None]
    return (pixels - mean) / std


def released_jpeg(image: Union["PIL.Image.Image", np.ndarray]) -> "PIL.Image.Image":  # noqa: F821
    """The image as the release's model sees it: saved as JPEG with PIL's defaults (quality 75), decoded again.

    The released SegAgent code hands the overlay over as a temporary JPEG file; doing the same round trip in
    memory gives the same pixels without a file (pair it with the tokenizer's IMAGE_PLACEHOLDER path).
    """
    import io

    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    buffer.seek(0)
    decoded = Image.open(buffer)
    decoded.load()
    return decoded
