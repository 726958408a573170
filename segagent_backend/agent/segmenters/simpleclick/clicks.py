"""SimpleClick's click encoding: the clicks as two maps (positive, negative) at the network's input size.

Each click is a point (row, col) in input pixels (fractional after the zoom-in's resize). With disks (the
published models: ``use_disks=True``, radius 5) a map is 1 inside any disk of radius ``radius`` around a
click of its sign, 0 elsewhere: pixel (r, c) is inside when (r - row)^2 + (c - col)^2 <= radius^2. Without
disks it is tanh(2 * d / radius), d the distance to the nearest click of that sign (1 where there is none).
Arithmetic is float32, in the order the reference computes it, so maps agree bit for bit on the disks' rims.
The previous prediction (a probability map) is the third input channel; the model puts it in front.
"""
from __future__ import annotations

from typing import Sequence

import torch

#: a click: (row, col, positive) in input pixels
Point = tuple[float, float, bool]


def click_maps(points: Sequence[Point], rows: int, cols: int, radius: float = 5.0, use_disks: bool = True,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """(2, rows, cols) float32: channel 0 the positive clicks' map, channel 1 the negative clicks'."""
    out = torch.empty(2, rows, cols, dtype=torch.float32, device=device)
    rr = torch.arange(rows, dtype=torch.float32, device=device)
    cc = torch.arange(cols, dtype=torch.float32, device=device)
    for channel, sign in enumerate((True, False)):
        mine = [(r, c) for r, c, positive in points if positive == sign]
        # no click of this sign: "infinitely" far (the reference fills a padded point's map with 1e6)
        nearest = torch.full((rows, cols), 1e6, dtype=torch.float32, device=device)
        if mine:
            at = torch.tensor(mine, dtype=torch.float32, device=device)  # (K, 2) rounded to float32 once
            dr = rr[None, :] - at[:, :1]  # (K, rows)
            dc = cc[None, :] - at[:, 1:]  # (K, cols)
            if not use_disks:
                dr, dc = dr / radius, dc / radius
            d2 = (dr * dr)[:, :, None] + (dc * dc)[:, None, :]  # (K, rows, cols) squared distances
            nearest = torch.minimum(nearest, d2.min(dim=0).values)
        if use_disks:
            out[channel] = (nearest <= radius * radius).float()
        else:
            out[channel] = torch.tanh(nearest.sqrt() * 2)
    return out
