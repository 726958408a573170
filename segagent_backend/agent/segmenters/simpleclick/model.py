"""SimpleClick's plain-ViT interactive segmentation model (ViT-B/L/H), written from its description.

The model (Liu et al., "SimpleClick: Interactive Image Segmentation with Simple Vision Transformers",
ICCV 2023) takes an RGB image, the previous prediction (a probability map) and the clicks as two disk maps
(positive, negative) and returns one logit map at the input size:

* image tokens: a patch embedding (conv, kernel = stride = patch) of the normalised image; click tokens:
  a second patch embedding of [previous mask, positive disks, negative disks] (2 channels without the
  previous mask), ADDED to the image tokens, then the learned position embedding (without its class token);
* a plain ViT (pre-norm blocks: multi-head attention, GELU MLP, LayerNorm eps 1e-6) whose blocks attend
  inside non-overlapping windows of 224x224 input pixels except every ``depth/4``-th block (every 6th for
  depth 12), which attends globally; the last block is always global;
* a simple feature pyramid from the last feature map (strides 4, 8, 16, 32: transposed convs / convs with
  one-group GroupNorm and GELU), and a SegFormer-like head: a 1x1 conv + ReLU per level, all resized
  (bilinear) to the stride-4 grid, concatenated, fused by a 1x1 conv + ReLU, optionally upsampled (x2/x4),
  then a 1x1 classifier; the logits are resized to the input (bilinear, corners aligned).

Parameter names follow the published checkpoints (``backbone.``, ``patch_embed_coords.``, ``neck.``,
``head.``), so their ``state_dict`` loads as it is; the classification parts of the pre-trained ViT
(class token, ``fc_norm``, ``head``) are carried by the files but unused here (see ``UNUSED_PREFIXES``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: checkpoint entries of the pre-trained classifier ViT that the interactive model never uses
UNUSED_PREFIXES = ("backbone.cls_token", "backbone.fc_norm.", "backbone.head.", "backbone.pre_logits.")

#: the pre-training input side: window attention splits the token grid into windows of this many pixels
WINDOW_PIXELS = 224

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SimpleClickConfig:
    """The hyper-parameters of one plain-ViT SimpleClick model (what a checkpoint's config says)."""

    img_size: tuple[int, int] = (448, 448)  # the training input: the position embedding's grid
    patch_size: tuple[int, int] = (16, 16)
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    neck_out_dims: tuple[int, ...] = (128, 256, 512, 1024)
    head_in_channels: tuple[int, ...] = (128, 256, 512, 1024)
    head_in_index: tuple[int, ...] = (0, 1, 2, 3)
    head_channels: int = 256
    head_upsample: str = "x1"
    head_num_classes: int = 1
    head_align_corners: bool = False
    head_norm: Optional[str] = None  # None, or "BN" (a BatchNorm after each head conv, as mmcv's ConvModule)
    with_prev_mask: bool = True
    use_disks: bool = True
    norm_radius: float = 5.0
    norm_mean: tuple[float, float, float] = IMAGENET_MEAN
    norm_std: tuple[float, float, float] = IMAGENET_STD
    model_class: str = field(default="PlainVitModel", compare=False)

    def __post_init__(self):
        if self.depth % 4 or self.depth == 4:
            raise ValueError(f"a plain-ViT SimpleClick needs a depth divisible by 4 and not 4, got {self.depth}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.head_upsample not in ("x1", "x2", "x4"):
            raise ValueError(f"head upsample must be x1, x2 or x4, got {self.head_upsample!r}")
        if self.head_norm not in (None, "BN"):
            raise ValueError(f"head norm {self.head_norm!r} is not supported (None or BN)")
        if len(self.head_in_channels) != len(self.head_in_index):
            raise ValueError("head in_channels and in_index differ in length")

    @property
    def variant(self) -> Optional[str]:
        """vit_base / vit_large / vit_huge when the backbone is one of the published ones, else None."""
        return {(768, 12, 12): "vit_base", (1024, 24, 16): "vit_large", (1280, 32, 16): "vit_huge"}.get(
            (self.embed_dim, self.depth, self.num_heads))

    @property
    def coord_channels(self) -> int:
        return 3 if self.with_prev_mask else 2

    @property
    def global_blocks(self) -> tuple[int, ...]:
        """Indices of the blocks that attend over the whole grid (the others attend inside windows)."""
        group = 6 if self.depth == 12 else self.depth // 4
        return tuple(i for i in range(self.depth) if (i + 1) % group == 0)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens (B, N, C)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: tuple[int, int]):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        # written out (not scaled_dot_product_attention): the same operations, in the same order, as the
        # reference implementation, so CPU results agree to the last bit
        weights = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTBackbone(nn.Module):
    """The plain ViT: image tokens + click tokens + position embedding, windowed / global blocks."""

    def __init__(self, cfg: SimpleClickConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.grid_size = (cfg.img_size[0] // cfg.patch_size[0], cfg.img_size[1] // cfg.patch_size[1])
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.embed_dim, cfg.patch_size)
        # one extra (class) token in front, as pre-trained; only the grid part is used
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1] + 1, cfg.embed_dim))
        self.blocks = nn.Sequential(*[Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias)
                                      for _ in range(cfg.depth)])
        self._global = set(cfg.global_blocks)

    def resize_pos_embed(self, input_size: tuple[int, int]) -> None:
        """Make the position embedding fit an input of ``input_size`` (H, W) pixels: the grid part resized
        bicubically (corners not aligned), the class token kept. A no-op at the current size."""
        new = (input_size[0] // self.patch_size[0], input_size[1] // self.patch_size[1])
        if new == self.grid_size:
            return
        pe = self.pos_embed.data
        extra = pe.shape[1] - self.grid_size[0] * self.grid_size[1]
        grid = pe[:, extra:].reshape(-1, *self.grid_size, pe.shape[-1]).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
        self.pos_embed = nn.Parameter(torch.cat((pe[:, :extra], grid.permute(0, 2, 3, 1).flatten(1, 2)), dim=1),
                                      requires_grad=False)
        self.grid_size = new

    def _windows(self) -> tuple[int, int]:
        """(rows, cols) of windows the grid splits into."""
        wh, ww = WINDOW_PIXELS // self.patch_size[0], WINDOW_PIXELS // self.patch_size[1]
        return self.grid_size[0] // wh, self.grid_size[1] // ww

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B * windows, N / windows, C), windows in row-major order."""
        b, _, c = x.shape
        (gh, gw), (nh, nw) = self.grid_size, self._windows()
        x = x.view(b, nh, gh // nh, nw, gw // nw, c).permute(0, 1, 3, 2, 4, 5).contiguous()
        return x.view(b * nh * nw, gh * gw // (nh * nw), c)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of ``_split``."""
        bw, n, c = x.shape
        (gh, gw), (nh, nw) = self.grid_size, self._windows()
        x = x.view(bw // (nh * nw), nh, nw, gh // nh, gw // nw, c).permute(0, 1, 3, 2, 4, 5).contiguous()
        return x.view(bw // (nh * nw), nh * nw * n, c)

    def forward(self, image: torch.Tensor, click_tokens: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image)
        x += click_tokens
        x = x + self.pos_embed[:, 1:]
        windowed = False
        for i, block in enumerate(self.blocks):
            if i in self._global:
                if windowed:
                    x = self._merge(x)
                    windowed = False
            elif not windowed:
                x = self._split(x)
                windowed = True
            x = block(x)
        return x  # the last block is global: (B, N, C)


def _gn(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(1, ch)


class SimpleFeaturePyramid(nn.Module):
    """The stride-16 ViT map -> maps at strides 4, 8, 16 and 32."""

    def __init__(self, in_dim: int, out_dims: Sequence[int]):
        super().__init__()
        c4, c8, c32 = max(out_dims[0] * 2, in_dim // 2), max(out_dims[1], in_dim // 2), max(out_dims[3], in_dim * 2)
        self.down_4 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, c4, 2, stride=2), _gn(c4), nn.GELU(),
            nn.ConvTranspose2d(c4, c4 // 2, 2, stride=2), _gn(c4 // 2),
            nn.Conv2d(c4 // 2, out_dims[0], 1), _gn(out_dims[0]), nn.GELU())
        self.down_8 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, c8, 2, stride=2), _gn(c8),
            nn.Conv2d(c8, out_dims[1], 1), _gn(out_dims[1]), nn.GELU())
        self.down_16 = nn.Sequential(nn.Conv2d(in_dim, out_dims[2], 1), _gn(out_dims[2]), nn.GELU())
        self.down_32 = nn.Sequential(
            nn.Conv2d(in_dim, c32, 2, stride=2), _gn(c32),
            nn.Conv2d(c32, out_dims[3], 1), _gn(out_dims[3]), nn.GELU())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.down_4(x), self.down_8(x), self.down_16(x), self.down_32(x)]


class ConvReLU(nn.Module):
    """A 1x1 conv (+ BatchNorm) + ReLU under mmcv ConvModule's parameter names (``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, norm: Optional[str]):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=norm is None)
        if norm == "BN":
            self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return self.act(x)


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2), _gn(cout), nn.Conv2d(cout, cout, 1), _gn(cout),
                         nn.GELU())


class SegHead(nn.Module):
    """Per-level 1x1 conv + ReLU, resized to the finest level, fused, optionally upsampled, classified."""

    def __init__(self, cfg: SimpleClickConfig):
        super().__init__()
        self.in_index = cfg.head_in_index
        self.align_corners = cfg.head_align_corners
        self.upsample = cfg.head_upsample
        out = {"x1": 1, "x2": 2, "x4": 4}[cfg.head_upsample] * cfg.head_channels
        self.convs = nn.ModuleList([ConvReLU(c, out, cfg.head_norm) for c in cfg.head_in_channels])
        self.fusion_conv = ConvReLU(out * len(cfg.head_in_channels), out, cfg.head_norm)
        # both upsampling stages exist in every checkpoint, whichever is used
        self.up_conv1 = _up(out, out // 2)
        self.up_conv2 = _up(out // 2, out // 4)
        self.conv_seg = nn.Conv2d(cfg.head_channels, cfg.head_num_classes, 1)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        levels = [levels[i] for i in self.in_index]
        size = levels[0].shape[2:]
        outs = [F.interpolate(conv(x), size=size, mode="bilinear", align_corners=self.align_corners)
                for conv, x in zip(self.convs, levels)]
        x = self.fusion_conv(torch.cat(outs, dim=1))
        if self.upsample == "x2":
            x = self.up_conv1(x)
        elif self.upsample == "x4":
            x = self.up_conv2(self.up_conv1(x))
        return self.conv_seg(x)


class SimpleClickModel(nn.Module):
    """image (B, 3, H, W) in [0, 1], click maps (B, 2, H, W), previous mask (B, 1, H, W) or None -> logits
    (B, 1, H, W). H and W are multiples of the window (224 px) once ``backbone.resize_pos_embed`` made the
    position embedding fit them (inference uses 448 x 448)."""

    def __init__(self, cfg: SimpleClickConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed_coords = PatchEmbed(cfg.coord_channels, cfg.embed_dim, cfg.patch_size)
        self.backbone = ViTBackbone(cfg)
        self.neck = SimpleFeaturePyramid(cfg.embed_dim, cfg.neck_out_dims)
        self.head = SegHead(cfg)
        self.register_buffer("mean", torch.tensor(cfg.norm_mean, dtype=torch.float32)[None, :, None, None],
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.norm_std, dtype=torch.float32)[None, :, None, None],
                             persistent=False)

    @property
    def with_prev_mask(self) -> bool:
        return self.cfg.with_prev_mask

    def forward(self, image: torch.Tensor, click_maps: torch.Tensor,
                prev_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        image = (image - self.mean) / self.std
        coords = click_maps if not self.with_prev_mask else torch.cat((prev_mask, click_maps), dim=1)
        tokens = self.backbone(image, self.patch_embed_coords(coords))
        b, _, c = tokens.shape
        gh, gw = self.backbone.grid_size
        levels = self.neck(tokens.transpose(-1, -2).reshape(b, c, gh, gw))
        logits = self.head(levels)
        return F.interpolate(logits, size=image.shape[2:], mode="bilinear", align_corners=True)
