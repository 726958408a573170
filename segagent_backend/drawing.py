"""Pictures of an episode for people: the mask, the box and the numbered clicks over the image."""
from __future__ import annotations

import numpy as np

from .agent.types import EpisodeResult


def can_write_image(path: str) -> bool:
    """True when OpenCV has a writer for the file name's extension (.png, .jpg, .jpeg, .bmp, .tif, .webp, ...)."""
    import cv2

    return bool(cv2.haveImageWriter(str(path)))


def draw_png(image: np.ndarray, episode: EpisodeResult, path: str) -> None:
    """The mask (green, alpha 0.5), the box and the clicks (green +, red -, numbered) over the image,
    written to ``path`` in the format its extension names. Raises OSError when it cannot be written."""
    import cv2

    from .agent.overlay import overlay_mask

    canvas = cv2.cvtColor(overlay_mask(image, episode.mask), cv2.COLOR_RGB2BGR)
    radius = max(3, round(max(image.shape[:2]) / 120))
    if episode.box is not None:
        b = episode.box
        cv2.rectangle(canvas, (round(b.x1), round(b.y1)), (round(b.x2), round(b.y2)), (255, 160, 0), 2)
    for n, step in enumerate(episode.trajectory, 1):
        centre = (round(step.click.x), round(step.click.y))
        color = (0, 200, 0) if step.click.positive else (0, 0, 230)
        cv2.circle(canvas, centre, radius, color, -1)
        cv2.circle(canvas, centre, radius, (255, 255, 255), 1)
        cv2.putText(canvas, str(n), (centre[0] + radius, centre[1] - radius), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 + radius / 30, (255, 255, 255), 1, cv2.LINE_AA)
    try:
        written = cv2.imwrite(str(path), canvas)
    except cv2.error as exc:
        raise OSError(f"could not write {path}: {str(exc).strip().splitlines()[-1]}") from None
    if not written:
        raise OSError(f"could not write {path}")
