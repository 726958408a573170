"""``segagent predict``: one episode on a local image -> a short summary, JSON (``--json``) and a picture (``--png``).

Everything the user gave is checked before any work: the output files' folders and the picture's
format, then the clicks, the box and the start mask (``--mask``) against the image size, then the model names.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..agent.types import Box, Click, EpisodeResult
from ..errors import ModelUnavailable, RequestError
from ..settings import Settings
from .arguments import check_output_file
from .errors import CommandFailed, UsageError

STDOUT = "-"


def parse_click(text: str) -> Click:
    """``X,Y[,+|-]`` (pixels, x = column) -> Click; the sign defaults to positive."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("+", "-")):
        raise argparse.ArgumentTypeError(f"click {text!r} must be X,Y or X,Y,+ or X,Y,-")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"click {text!r}: X and Y must be numbers") from None
    return Click(x, y, len(parts) == 2 or parts[2] == "+")


def parse_box(text: str) -> Box:
    """``X1,Y1,X2,Y2`` (pixels) -> Box."""
    try:
        x1, y1, x2, y2 = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"box {text!r} must be X1,Y1,X2,Y2") from None
    return Box(x1, y1, x2, y2)


def register(sub) -> None:
    """``segagent predict``."""
    p = sub.add_parser("predict", help="run one episode on a local image: print a summary, write JSON and a picture",
                       description="Run one episode on a local image: the given clicks and box through the "
                                   "interactive tool, or the SegAgent policy on --expression. Prints a short "
                                   "summary; --json FILE writes the full result, --png FILE a picture. "
                                   "Outputs, clicks and models are checked before any work.")
    p.add_argument("--image", required=True, metavar="FILE", help="the image file (JPEG, PNG, BMP, TIFF, WebP)")
    p.add_argument("--expression", help="referring expression: with SEGAGENT_POLICY set the policy clicks")
    p.add_argument("--click", type=parse_click, action="append", default=[], metavar="X,Y,+|-",
                   help="a click in pixels inside the image (x = column, 0 <= x < width), + positive (default) "
                        "or - negative; repeat in order")
    p.add_argument("--box", type=parse_box, metavar="X1,Y1,X2,Y2", help="a box prompt in pixels, inside the image")
    p.add_argument("--mask", metavar="PNG",
                   help="refine this mask: a PNG of the image's size, object = non-zero pixels (or non-zero alpha "
                        "where it has transparency); the tool starts from it and --click / the policy "
                        "(--expression) continue from there")
    p.add_argument("--json", metavar="FILE",
                   help="write the full result as JSON to FILE (COCO RLE mask, trajectory, Label Studio result); "
                        "'-' prints it on standard output instead of the summary")
    p.add_argument("--png", metavar="FILE",
                   help="draw the mask and the clicks over the image into FILE (.png, .jpg, ...: any format "
                        "OpenCV writes)")
    p.set_defaults(run=cmd_predict)


def check_outputs(args: argparse.Namespace) -> None:
    from ..drawing import can_write_image

    if args.json != STDOUT:
        check_output_file(args.json, "--json")
    check_output_file(args.png, "--png")
    if args.png is not None and not can_write_image(args.png):
        raise UsageError(f"--png {args.png}: unknown picture format {Path(args.png).suffix or '(no extension)'!r}: "
                         f"use .png, .jpg, .jpeg, .bmp, .tif or .webp")


def check_prompts(clicks: list[Click], box: Optional[Box], width: int, height: int) -> None:
    """Clicks must lie on a pixel (0 <= x < width, 0 <= y < height), a box within the image's edges."""
    for n, c in enumerate(clicks, 1):
        if not (0 <= c.x < width and 0 <= c.y < height):
            raise UsageError(f"click {n} ({c.x:g},{c.y:g}) is outside the {width}x{height} image "
                             f"(x in 0..{width - 1}, y in 0..{height - 1})")
    if box is not None:
        if not all(0 <= v <= width for v in (box.x1, box.x2)) or not all(0 <= v <= height for v in (box.y1, box.y2)):
            raise UsageError(f"box ({box.x1:g},{box.y1:g},{box.x2:g},{box.y2:g}) is outside the {width}x{height} "
                             f"image (x in 0..{width}, y in 0..{height})")
        if box.x1 == box.x2 or box.y1 == box.y2:
            raise UsageError(f"box ({box.x1:g},{box.y1:g},{box.x2:g},{box.y2:g}) is empty")


def load_mask_file(path: str, width: int, height: int) -> np.ndarray:
    """A binary mask picture -> (height, width) bool: non-zero pixels (of its alpha channel when it has
    transparency, else of its grey levels). UsageError, in one line, when it cannot be read or its size
    is not the image's (checked from the header, before the pixels are decoded)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.size != (width, height):
                raise UsageError(f"--mask {path}: the mask is {img.size[0]}x{img.size[1]}, the image is "
                                 f"{width}x{height}")
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                alpha = np.asarray(img.convert("RGBA"))[:, :, 3]
                if alpha.min() < 255:
                    return alpha > 0
            return np.asarray(img.convert("L")) > 0
    except UsageError:
        raise
    except FileNotFoundError:
        raise UsageError(f"--mask {path}: no such file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise UsageError(f"--mask {path}: not a readable picture ({type(exc).__name__})") from None


def cmd_predict(args: argparse.Namespace) -> int:
    from ..agent.loop import EpisodeRequest
    from ..assembly import model_host
    from ..drawing import draw_png
    from ..media import load_image_file
    from ..wiring import segmenter_from_settings
    from .models import check_settings_models, load_failure, quiet_load_errors, tool_variable

    check_outputs(args)
    settings = Settings.from_env()
    use_policy = bool(args.expression and settings.policy and (not args.click or settings.refine))
    # SAM 3 starts an automatic episode (or, without a policy, is the whole prediction)
    use_text = bool(args.expression and settings.text_model and not args.click and args.box is None and not args.mask)
    if not (use_policy or use_text) and not args.click and args.box is None:
        raise RequestError(("give --click to refine --mask" if args.mask else "give --click and/or --box")
                           + ", or --expression with a SegAgent policy (SEGAGENT_POLICY) or a SAM 3 text model"
                           " (SEGAGENT_TEXT_MODEL)")
    image = load_image_file(args.image, settings.max_image_pixels)
    height, width = image.shape[:2]
    check_prompts(args.click, args.box, width, height)
    mask = load_mask_file(args.mask, width, height) if args.mask else None
    tools = []  # the tool loads first, then the policy: an empty list says the tool failed

    def build_tool(settings: Settings, cache):
        tools.append(segmenter_from_settings(settings, cache))
        return tools[-1]

    host = model_host(settings, build_segmenter=build_tool)
    check_settings_models(settings, host.policy_checkpoint)
    with quiet_load_errors():
        try:
            host.load()  # the tool and the policy (if any), once
        except ModelUnavailable as exc:
            what = tool_variable(settings) if not tools else (
                f"SEGAGENT_TEXT_MODEL={settings.text_model!r}" if "SEGAGENT_TEXT_MODEL" in str(exc)
                else f"SEGAGENT_POLICY={settings.policy!r}" if host.policy_checkpoint == settings.policy
                else f"model version {host.policy_checkpoint!r}")
            raise load_failure(what, str(exc)) from None
    start = host.start_from_text(image, args.expression) if use_text else None  # None: a policy starts empty
    if start is not None and not use_policy:  # SAM 3 alone
        episode = EpisodeResult(start.mask, start.score)
    elif use_policy:  # the same path as automatic predictions: the policy clicks, the tool segments
        mask = start.mask if start is not None else mask
        episode = host.run_policy([EpisodeRequest(image, args.expression, args.box, args.click, mask=mask)])[0]
    else:  # the tool alone, from the mask when one is given
        episode = host.run_clicks(image, args.click, args.box, mask=mask)
    payload = episode_json(image, episode, args.expression, host.model_version)
    if args.png:  # first: a picture that fails leaves no JSON behind
        try:
            draw_png(image, episode, args.png)
        except OSError as exc:
            raise CommandFailed(str(exc)) from None
    if args.json == STDOUT:
        print(json.dumps(payload))
        return 0
    if args.json:
        Path(args.json).expanduser().write_text(json.dumps(payload))
    print(summary(args, payload, episode))
    return 0


def episode_json(image: np.ndarray, episode: EpisodeResult, expression: Optional[str], model_version: str) -> dict:
    from trainer.traces import mask_to_rle

    from ..labelstudio.config import EXAMPLE_CONFIG, parse_label_config

    height, width = image.shape[:2]
    config = parse_label_config(EXAMPLE_CONFIG)
    clicks = [step.click for step in episode.trajectory]
    result = [config.brush.region(episode.mask, config.brush.label_for(None), config.image_name, episode.score)]
    result += config.trajectory.regions(clicks, config.image_name, width, height)
    return {
        "width": width,
        "height": height,
        "expression": expression,
        "model_version": model_version,
        "mask": mask_to_rle(episode.mask),
        "score": episode.score,
        "box": None if episode.box is None else [episode.box.x1, episode.box.y1, episode.box.x2, episode.box.y2],
        "trajectory": [
            {"x": s.click.x, "y": s.click.y, "positive": s.click.positive, "iou_estimate": s.iou_estimate}
            for s in episode.trajectory
        ],
        "malformed_answers": episode.malformed,
        "stop_reason": episode.stop_reason,
        "result": result,
    }


def summary(args: argparse.Namespace, payload: dict, episode: EpisodeResult) -> str:
    """A few lines for people: the image, the prompts, the mask, the model and where the files went."""
    width, height = payload["width"], payload["height"]
    clicks = "; ".join(f"{s['x']:g},{s['y']:g} {'+' if s['positive'] else '-'}" for s in payload["trajectory"])
    prompts = [f"{len(payload['trajectory'])} click(s)" + (f" ({clicks})" if clicks else "")]
    if payload["box"]:
        prompts.append("box " + ",".join(f"{v:g}" for v in payload["box"]))
    if args.expression:
        prompts.append(f"expression {args.expression!r}")
    if getattr(args, "mask", None):
        prompts.append(f"from the mask {args.mask}")
    area = int(np.count_nonzero(episode.mask))
    lines = [f"{args.image}: {width}x{height}, " + ", ".join(prompts),
             f"mask: {area} px ({100.0 * area / (width * height):.1f}% of the image), score {payload['score']:.3f}"
             + (f", stopped: {payload['stop_reason']}" if payload["stop_reason"] else "")
             + (f", {payload['malformed_answers']} malformed answer(s)" if payload["malformed_answers"] else ""),
             f"model: {payload['model_version']}"]
    written = [f"{what} {path}" for what, path in (("JSON", args.json), ("picture", args.png)) if path]
    lines.append("wrote " + ", ".join(written) if written else
                 "(--json FILE for the full result, --json - to print it, --png FILE for a picture)")
    return "\n".join(lines)

