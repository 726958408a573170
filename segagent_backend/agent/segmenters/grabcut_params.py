"""The GrabCut tool's tunables: one frozen record, so every value is named and checked in one place."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GrabCutParams:
    """How :class:`~.grabcut.GrabCutSegmenter` turns clicks into masks (defaults measured on the GrabCut set).

    Fields:
        max_side: longest side of the working image in pixels (larger images are downscaled for
            speed, the mask is upsampled back).
        iterations: GrabCut iterations for the first segmentation.
        refine_iterations: GrabCut iterations for the proposals of later clicks (a window only).
        sure_radius: radius of the sure-label disk at each click, in working pixels.
        object_radius: largest probable-object disk around a later positive click, as a fraction
            of the working image's shorter side.
        first_radius: the probable-object disk of the first positive click, same unit (with
            ``adaptive_seed=False`` every disk is ``object_radius``).
        flip_factor: later disks: at most ``flip_factor`` x the distance to the nearest image
            edge (and to the previous mask), at least ``min_seed`` x the largest size.
        margin, min_roi: later proposals run in the box around mask and clicks widened by
            ``margin`` x its size + ``min_roi`` / 2 pixels.
        reach_factor, neg_reach_factor, min_reach: a positive (negative) click changes pixels
            within ``max(min_reach, reach_factor (neg_reach_factor) x distance to the previous
            mask's boundary)`` of it only.
        local: False = plain GrabCut from the clicks every call (no locality rule at all).
        geometric_fallback, fallback_ratio: the look-alike removal rule above (pixels
            ``fallback_ratio`` times closer to the negative click than to every positive one).
        canny, blur: Canny thresholds and Gaussian blur size of the cached edge map.
        own_region, own_ratio, own_max: the rule for a positive click on a part of other colours
            (above): on when the proposal added less than ``own_ratio`` x the area of the click's
            probable-object disk; the part added is at most ``own_max`` x the previous mask's area.
        seed: OpenCV RNG seed set before every GrabCut call (its GMM init uses k-means).
        gc_pixels: the graph cut's own resolution, bounded in pixels: a later call's GrabCut runs on
            its region of interest (the window around mask and clicks) downscaled to at most this many
            pixels; its mask comes back to the region's size by an edge-aware (guided-filter)
            upsampling. 0 = no bound (the region at working size).
        first_gc_pixels: the same bound for a cut that looks for a new part: a first call (no mask yet:
            the whole working image), which sets the object's extent for every later click, and a
            positive click's own-region cut (a part of other colours, below); 0 = no bound (the working
            image is at most ``max_side`` anyway). Such clicks are the dearest already; a coarser cut
            there lost whole parts (a bush's lower half).
        guided_eps, guided_radius: the guided filter of every upsampling (working -> original, graph
            cut -> working): regularisation on the [0, 1] grey guide, and radius in multiples of the
            upsampling factor (at least 2 pixels); only a band of that radius around the bilinear
            boundary can change.
        reuse_models: a later call's window GrabCut starts from the colour models (GMMs) the previous
            call left in its state (``GC_EVAL``) instead of a k-means initialisation.
        grow_roi: when a later call's window proposal touches a side of the window that is not the
            image's, that side moves out by ``margin`` x the window's size (at least ``min_roi``) and
            GrabCut runs once more on the larger window; the next call of the episode starts from at
            least that grown window (kept in the state: the step cache carries it).
        gc_tol: every GrabCut runs its iterations one at a time (the same result as one call: the colour
            models carry over) and stops after an iteration that flipped at most this fraction of its
            pixels (converged: the rest would change next to nothing); 0 = always ``iterations`` /
            ``refine_iterations``.
        hold_factor, hold_margin: a later call's window GrabCut keeps the previous mask as sure labels
            (object / background) beyond ``hold_factor`` x the click's reach + ``hold_margin`` working
            pixels from the click (the click may change pixels within its reach only): the graph cut
            decides the click's neighbourhood alone, and the colour models learn from the mask the
            episode has made so far; 0 = the whole window free, seeded by the clicks alone.
    """

    max_side: int = 512
    iterations: int = 4
    refine_iterations: int = 4
    sure_radius: int = 4
    object_radius: float = 0.12
    first_radius: float = 0.2
    min_roi: int = 48
    flip_factor: float = 0.8
    margin: float = 0.3
    reach_factor: float = 3.0
    neg_reach_factor: float = 4.0
    min_reach: int = 8
    local: bool = True
    seed: int = 0
    canny: tuple[int, int] = (40, 100)
    adaptive_seed: bool = True
    min_seed: float = 0.5
    geometric_fallback: bool = True
    fallback_ratio: float = 1.5
    blur: int = 5
    own_region: bool = True
    own_ratio: float = 0.5
    own_max: float = 1.0
    gc_pixels: int = 60_000
    first_gc_pixels: int = 0
    guided_eps: float = 1e-3
    guided_radius: float = 1.0
    reuse_models: bool = False
    grow_roi: bool = True
    gc_tol: float = 0.003
    hold_factor: float = 2.0
    hold_margin: int = 16

    def __post_init__(self):
        if self.max_side < 16:
            raise ValueError("max_side must be >= 16")
        object.__setattr__(self, "blur", int(self.blur) | 1)  # an odd Gaussian kernel
