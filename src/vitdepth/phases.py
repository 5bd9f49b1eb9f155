"""Phases of a curve over depth: Cliff, Plateau, Climb (design §5).

The paper behind vitdepth ("Mechanisms of Non-Monotonic Scaling in Vision Transformers",
arXiv 2511.21635) describes per-layer curves of ViTs as three phases along depth: a *Cliff*
(a steep early fall), a *Plateau* and a *Climb*. This module finds such phases in any curve
over layers, with no model in sight: it works on plain numpy arrays (``x`` = layer positions,
``pre`` = -1 then 0..L), so it is tested on synthetic curves.

- :func:`fit_three_segments` — the least-squares *continuous* three-segment piecewise-linear
  fit (segmented regression: Hudson 1966, "Fitting segmented curves whose join points have to
  be estimated", JASA 61; Muggeo 2003, Stat. Med. 22). The two knots are searched exhaustively
  over the data positions, O(L²) pairs, each solved exactly with the hinge basis
  ``[1, x, (x-k1)+, (x-k2)+]``. Restricting knots to data positions is a choice, not an
  approximation we hide: layer curves are sampled only at layers, and a knot between two
  layers has no meaning for "where the phase changes" beyond the interval it lies in.
- :func:`label_shape` — a deterministic name for the shape from the three segment slopes
  (``cliff-plateau-climb``, ``monotone-rise``, ...), with documented thresholds
  (:class:`PhaseThresholds`).
- :func:`bootstrap_breakpoints` — percentile-bootstrap CIs (Efron 1979; Efron & Tibshirani
  1993, ch. 13) of the knots, resampling images exactly as
  :func:`vitdepth.metrics.stats.bootstrap_mean_ci` does and refitting every resampled mean
  curve; the pairwise least-squares solves are computed once per ``x`` so a refit is a few
  matrix products.
- :func:`saturation_layer` and :func:`tradeoff_onset` — effective depth (first layer reaching
  99 % of the best probe accuracy) and the information–task trade-off onset (how much ISI still
  rises after saturation).

All functions are deterministic, and bad input raises a one-line :class:`VitdepthError`.
Only numpy is imported: phases sit above the results table and below nothing (style rule 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from numbers import Integral, Real
from typing import Any

import numpy as np

from vitdepth._errors import VitdepthError

__all__ = [
    "PhaseFit",
    "PhaseThresholds",
    "SEGMENT_CLASSES",
    "bootstrap_breakpoints",
    "classify_slope",
    "fit_three_segments",
    "freeze_recommendation",
    "label_shape",
    "layer_position",
    "recommendations",
    "saturation_layer",
    "tradeoff_onset",
]


class _PhaseInputError(VitdepthError, ValueError):
    """Bad input to a phase helper (also a ``ValueError``, the Python convention)."""


# Relative tolerance (of the total sum of squares) under which two knot pairs count as equally
# good; the first pair in (k1, k2) lexicographic order wins, so exact ties (a straight line fits
# every pair) give the same answer on every platform instead of whichever roundoff is smallest.
_TIE_RTOL = 1e-10
# Bound on the elements of one block of bootstrap refits (B x pairs x points), ~32 MiB.
_BLOCK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------------
# Thresholds and segment classes
# --------------------------------------------------------------------------------------------

SEGMENT_CLASSES = ("fall-steep", "fall", "flat", "rise")


@dataclass(frozen=True)
class PhaseThresholds:
    """Slope thresholds that classify one segment of a fitted curve.

    Slopes are *scale-free*: the fitted slope per layer, times ``depth`` (so per unit of relative
    depth, layer / L), divided by the curve's range ``max(y) - min(y)``. A slope of 1 therefore
    means "at this rate the segment would cross the curve's whole range over the whole depth"; a
    straight line from the minimum at layer 0 to the maximum at layer L has slope 1, and one that
    covers the range over a quarter of the depth has slope 4. Because of this scaling the same
    thresholds serve every metric (accuracy, ISI, rank, ...) and every model size.

    The three thresholds cut the real line into the four segment classes, in this order::

        slope <= cliff_slope                     -> "fall-steep"  (a Cliff)
        cliff_slope < slope <= -flat_slope       -> "fall"
        -flat_slope < slope < climb_slope        -> "flat"        (a Plateau)
        slope >= climb_slope                     -> "rise"        (a Climb)

    With the defaults (``flat_slope == climb_slope``) the flat band is ``|slope| < flat_slope``.
    If ``climb_slope > flat_slope``, a gentle rise below ``climb_slope`` counts as flat; if it is
    smaller, a rise steeper than ``climb_slope`` counts as a rise even when ``|slope| <
    flat_slope``. ``cliff_slope == -flat_slope`` leaves the "fall" class empty.

    Attributes:
        cliff_slope: At or below this a segment *falls steeply* (a Cliff). Default -0.5: the
            segment loses at least half the curve's range per full depth, e.g. >= 10 % of the
            range in the first fifth of the layers — in the paper's curves the Cliff loses most
            of the range in a few early layers (slopes of -2 and steeper), so -0.5 accepts
            every real cliff with margin while a slow drift (-0.25 to -0.5) is only a "fall".
        flat_slope: Falls shallower than this (``slope > -flat_slope``) are flat, and with the
            default ``climb_slope`` so are rises below it. Default 0.25: a Plateau spanning half
            the depth then moves by less than 12.5 % of the range, which is within the noise of
            per-layer estimates on a few thousand images, yet a real trend across the middle
            layers (25 % of the range or more over the depth) is not called flat.
        climb_slope: At or above this a segment *rises* (a Climb). Default 0.25, equal to
            ``flat_slope`` so that flat/rise is one cut and no slope is left unclassified.
    """

    cliff_slope: float = -0.5
    flat_slope: float = 0.25
    climb_slope: float = 0.25

    def __post_init__(self) -> None:
        for name in ("cliff_slope", "flat_slope", "climb_slope"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise _PhaseInputError(
                    f"The '{name}' parameter of PhaseThresholds must be a finite float. Got {value!r} instead.")
        for name in ("flat_slope", "climb_slope"):
            if getattr(self, name) <= 0:
                raise _PhaseInputError(f"The '{name}' parameter of PhaseThresholds must be a float in the range "
                                       f"(0, inf). Got {getattr(self, name)!r} instead.")
        if self.cliff_slope > -self.flat_slope:
            raise _PhaseInputError(
                f"The 'cliff_slope' parameter of PhaseThresholds must be <= -flat_slope = {-self.flat_slope!r} "
                f"(a steep fall is a fall). Got {self.cliff_slope!r} instead.")

    def to_dict(self) -> dict[str, float]:
        """The thresholds as a JSON-ready dict."""
        return {"cliff_slope": float(self.cliff_slope), "flat_slope": float(self.flat_slope),
                "climb_slope": float(self.climb_slope)}


_DEFAULT_THRESHOLDS = PhaseThresholds()


def _check_thresholds(thresholds: object, owner: str) -> PhaseThresholds:
    if not isinstance(thresholds, PhaseThresholds):
        raise _PhaseInputError(f"The 'thresholds' parameter of {owner} must be a PhaseThresholds. "
                               f"Got {type(thresholds).__name__} instead.")
    return thresholds


def classify_slope(slope: float, thresholds: PhaseThresholds = _DEFAULT_THRESHOLDS) -> str:
    """Class of one scale-free segment slope: one of :data:`SEGMENT_CLASSES`.

    See :class:`PhaseThresholds` for the cuts.

    Examples:
        >>> [classify_slope(s) for s in (-3.0, -0.3, 0.1, 0.25)]
        ['fall-steep', 'fall', 'flat', 'rise']
    """
    thresholds = _check_thresholds(thresholds, "classify_slope")
    s = _finite_float(slope, "slope", "classify_slope")
    if s <= thresholds.cliff_slope:
        return "fall-steep"
    if s <= -thresholds.flat_slope:
        return "fall"
    if s < thresholds.climb_slope:
        return "flat"
    return "rise"


_FALLING = {"fall-steep", "fall"}


def _name_classes(classes: tuple[str, ...]) -> str:
    """The shape name of a sequence of segment classes (the table in :func:`label_shape`)."""
    if all(c in _FALLING for c in classes):
        return "monotone-fall"
    if all(c == "rise" for c in classes):
        return "monotone-rise"
    if all(c == "flat" for c in classes):
        return "flat"
    runs = [c for i, c in enumerate(classes) if i == 0 or c != classes[i - 1]]
    words = []
    for i, c in enumerate(runs):
        if c == "fall-steep":
            words.append("cliff")
        elif c == "fall":
            words.append("fall")
        elif c == "flat":
            words.append("plateau")
        else:  # a rise out of a cliff or a plateau is the paper's Climb; a first rise or one after a fall is a rise
            words.append("climb" if i > 0 and runs[i - 1] in ("fall-steep", "flat") else "rise")
    return "-".join(words)


def label_shape(slopes: Any, thresholds: PhaseThresholds = _DEFAULT_THRESHOLDS) -> str:
    """Name the shape of a three-segment fit from its scale-free slopes.

    Each slope is classified (:func:`classify_slope`) as fall-steep (S), fall (F), flat (0) or
    rise (R). Then, in this order:

    1. every segment falling (S or F, steep or not)  -> ``"monotone-fall"``;
    2. every segment R                               -> ``"monotone-rise"``;
    3. every segment 0                               -> ``"flat"``;
    4. otherwise equal neighbouring classes merge into runs, and the runs are named
       S -> ``cliff``, F -> ``fall``, 0 -> ``plateau``, R -> ``climb`` when the run before it is
       a cliff or a plateau (the paper's Climb: a recovery), else ``rise``; the words are joined
       with ``-``.

    The resulting table (classes of segments 1, 2, 3 -> label; "x" = any class that makes no
    other row apply), with every two-run shape listed::

        S 0 R -> cliff-plateau-climb     (the paper's shape)
        R R R -> monotone-rise           S/F S/F S/F -> monotone-fall     0 0 0 -> flat
        R 0 0, R R 0 -> rise-plateau     0 R R, 0 0 R -> plateau-climb
        S 0 0, S S 0 -> cliff-plateau    F 0 0, F F 0 -> fall-plateau
        0 S S, 0 0 S -> plateau-cliff    0 F F, 0 0 F -> plateau-fall
        R F F, R R F -> rise-fall        R S S, R R S -> rise-cliff
        F R R, F F R -> fall-rise        S R R, S S R -> cliff-climb
        three runs   -> the three words, e.g. S 0 R cliff-plateau-climb, F 0 R fall-plateau-climb,
                        R 0 R rise-plateau-climb, 0 R 0 plateau-climb-plateau, R F R rise-fall-rise,
                        S F 0 cliff-fall-plateau, R S 0 rise-cliff-plateau

    Because slopes are divided by the curve's range, the classes are relative: on a noiseless
    non-constant curve some segment always has ``|slope| >= L / (L + 1)`` (the segments together
    must cross the range), so ``flat`` means a constant curve — or, with noise, no trend larger
    than the scatter — and a gentle ``fall`` (or ``plateau-fall``, ``fall-plateau``) appears only
    when a larger rise, or noise, sets the range. How stable a label is under resampling of
    images is what :func:`bootstrap_breakpoints` reports as ``label_agreement``.

    Args:
        slopes: Three scale-free slopes, as in :attr:`PhaseFit.slopes`.
        thresholds: The cuts between classes.

    Returns:
        The shape name.

    Examples:
        >>> label_shape((-3.0, 0.0, 1.0))
        'cliff-plateau-climb'
        >>> label_shape((0.5, 1.0, 2.0)), label_shape((0.1, 0.0, 1.0)), label_shape((-0.3, 0.0, 0.0))
        ('monotone-rise', 'plateau-climb', 'fall-plateau')
    """
    thresholds = _check_thresholds(thresholds, "label_shape")
    try:
        seq = [float(s) for s in slopes]
    except (TypeError, ValueError):
        raise _PhaseInputError(
            f"The 'slopes' parameter of label_shape must be three floats. Got {slopes!r} instead.") from None
    if len(seq) != 3 or not all(math.isfinite(s) for s in seq):
        raise _PhaseInputError(f"The 'slopes' parameter of label_shape must be three finite floats. "
                               f"Got {slopes!r} instead.")
    return _name_classes(tuple(classify_slope(s, thresholds) for s in seq))


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _finite_float(value: object, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)) or not math.isfinite(value):
        raise _PhaseInputError(f"The '{name}' parameter of {owner} must be a finite float. Got {value!r} instead.")
    return float(value)


def _positive_int(value: object, name: str, owner: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise _PhaseInputError(f"The '{name}' parameter of {owner} must be an int in the range [{minimum}, inf). "
                               f"Got {value!r} instead.")
    return int(value)


def _fraction(value: object, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 < float(value) <= 1.0:
        raise _PhaseInputError(f"The 'fraction' parameter of {owner} must be a float in the range (0, 1]. "
                               f"Got {value!r} instead.")
    return float(value)


def _as_1d(values: object, name: str, owner: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise _PhaseInputError(f"The '{name}' parameter of {owner} must be a 1-D array of numbers. "
                               f"Got {type(values).__name__} instead.") from None
    if arr.ndim != 1:
        raise _PhaseInputError(f"The '{name}' parameter of {owner} must be 1-D; got shape {arr.shape}.")
    return arr


def _check_x(x: object, owner: str) -> np.ndarray:
    xa = _as_1d(x, "x", owner)
    if not np.all(np.isfinite(xa)):
        raise _PhaseInputError(f"The 'x' parameter of {owner} must hold finite layer positions; got {xa.tolist()}.")
    if np.unique(xa).size != xa.size:
        raise _PhaseInputError(f"The 'x' parameter of {owner} must hold distinct layer positions; got {xa.tolist()}.")
    return xa


def _same_length(xa: np.ndarray, ya: np.ndarray, name: str, owner: str) -> None:
    if xa.shape[0] != ya.shape[0]:
        raise _PhaseInputError(f"{owner}: x and {name} must have the same length; got len(x)={xa.shape[0]} "
                               f"and len({name})={ya.shape[0]}.")


def _check_min_points(min_points: object, owner: str) -> int:
    return _positive_int(min_points, "min_points", owner, minimum=2)


def _needed_points(min_points: int) -> int:
    # Three segments of m points sharing two knots need 3m - 2 points; and at least 5, one more
    # than the four coefficients, or every fit interpolates and r2 == 1 says nothing.
    return max(3 * min_points - 2, 5)


# --------------------------------------------------------------------------------------------
# The exhaustive fit
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Design:
    """Per-pair least-squares solves for sorted, distinct ``x`` (cached: bootstrap refits reuse it).

    ``pairs`` (P, 2) index the knots into ``x``; ``q`` (P, n, 4) is an orthonormal basis of each
    pair's hinge design, so the fitted values of ``y`` are ``q q^T y``; ``solve`` (P, 4, n) maps
    ``y`` to the hinge coefficients ``[c0, c1, c2, c3]`` of the pair.
    """

    x: np.ndarray
    pairs: np.ndarray
    q: np.ndarray
    solve: np.ndarray


def _hinge_design(x: np.ndarray, k1: np.ndarray | float, k2: np.ndarray | float) -> np.ndarray:
    """Hinge basis ``[1, x, (x-k1)+, (x-k2)+]``; knots broadcast as (P,) -> (P, n, 4)."""
    k1 = np.asarray(k1, dtype=np.float64)[..., None]
    k2 = np.asarray(k2, dtype=np.float64)[..., None]
    xb = np.broadcast_to(x, np.broadcast_shapes(k1.shape, x.shape))
    return np.stack([np.ones_like(xb), xb, np.maximum(xb - k1, 0.0), np.maximum(xb - k2, 0.0)], axis=-1)


def _candidate_pairs(n: int, min_points: int) -> np.ndarray:
    """Knot index pairs (i, j), i < j, with segments x[0..i], x[i..j], x[j..n-1] of >= min_points each."""
    m = min_points
    pairs = [(i, j) for i in range(m - 1, n) for j in range(i + m - 1, n - m + 1)]
    return np.array(pairs, dtype=np.intp).reshape(-1, 2)


@lru_cache(maxsize=32)
def _design(x_key: tuple[float, ...], min_points: int) -> _Design:
    x = np.array(x_key, dtype=np.float64)
    pairs = _candidate_pairs(x.size, min_points)
    # Centre x so the basis is well conditioned whatever the layer numbering; the hinge
    # coefficients c2, c3 (slope changes) do not depend on the centring, c0, c1 are mapped back.
    shift = float(x.mean())
    xc = x - shift
    design = _hinge_design(xc, xc[pairs[:, 0]], xc[pairs[:, 1]])  # (P, n, 4)
    q, r = np.linalg.qr(design)
    solve_c = np.linalg.solve(r, np.swapaxes(q, 1, 2))  # (P, 4, n): coefficients in centred x
    solve = solve_c.copy()
    solve[:, 0, :] = solve_c[:, 0, :] - shift * solve_c[:, 1, :]  # c0 at x = 0: value of segment 1's line
    for arr in (x, pairs, q, solve):
        arr.setflags(write=False)
    return _Design(x=x, pairs=pairs, q=q, solve=solve)


def _best_pairs(design: _Design, ys: np.ndarray) -> np.ndarray:
    """Index of the least-squares knot pair for each row of ``ys`` (B, n); ties -> first pair."""
    n_pairs, n = design.q.shape[0], design.q.shape[1]
    out = np.empty(ys.shape[0], dtype=np.intp)
    block = max(1, _BLOCK_ELEMENTS // max(1, n_pairs * n))
    q_t = np.swapaxes(design.q, 1, 2)  # (P, 4, n)
    for start in range(0, ys.shape[0], block):
        yb = ys[start:start + block]
        yc = yb - yb.mean(axis=1, keepdims=True)  # the intercept column absorbs the mean; fewer cancellations
        coef = np.einsum("pkn,bn->pbk", q_t, yc)  # (P, B, 4)
        fitted = np.matmul(coef, q_t)  # (P, B, n)
        rss = np.sum((yc[None] - fitted) ** 2, axis=2).T  # (B, P)
        tss = np.sum(yc * yc, axis=1)
        near = rss <= rss.min(axis=1, keepdims=True) + _TIE_RTOL * tss[:, None] + 1e-300
        out[start:start + block] = np.argmax(near, axis=1)
    return out


def _slopes_from_coef(coef: np.ndarray, depth: int, scale: np.ndarray) -> np.ndarray:
    """Scale-free slopes (B, 3) from hinge coefficients (B, 4) and curve ranges (B,)."""
    c1, c2, c3 = coef[:, 1], coef[:, 2], coef[:, 3]
    per_layer = np.stack([c1, c1 + c2, c1 + c2 + c3], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = per_layer * depth / scale[:, None]
    # A constant curve has no range to scale by: its slopes are 0 (and it is "flat").
    return np.where(scale[:, None] > 0, scaled, 0.0)


@dataclass
class PhaseFit:
    """A continuous three-segment piecewise-linear fit of one curve over layers.

    Attributes:
        breakpoints: Layer positions (``pre`` = -1, then 0..L) of the two knots, k1 < k2.
        slopes: Slopes of the three segments per unit relative depth, divided by the curve's
            range (scale-free; see :class:`PhaseThresholds`).
        intercept: Value at x = 0 of segment 1's line, in the curve's units.
        r2: Coefficient of determination of the fit on the points used (1.0 for a constant curve).
        label: Shape name from :func:`label_shape`.
        fitted: Fitted values at every input ``x`` (also where ``y`` was NaN), input order.
        depth: Number of blocks L; relative depth is ``x / depth``.
        scale: The curve's range ``max(y) - min(y)`` that divides the slopes.
        n_points: Number of points fitted (non-NaN ``y``).
    """

    breakpoints: tuple[float, float]
    slopes: tuple[float, float, float]
    intercept: float
    r2: float
    label: str
    fitted: np.ndarray = field(repr=False)
    depth: int = 0
    scale: float = 0.0
    n_points: int = 0

    @property
    def relative_breakpoints(self) -> tuple[float, float]:
        """Knots in relative depth (layer / L), for comparing models of different depths."""
        if not self.depth:
            return (math.nan, math.nan)
        return (self.breakpoints[0] / self.depth, self.breakpoints[1] / self.depth)

    def to_dict(self) -> dict[str, Any]:
        """The fit as a JSON-ready dict (plain floats, ints, strings and lists)."""
        return {
            "breakpoints": [float(b) for b in self.breakpoints],
            "relative_breakpoints": [_json_float(b) for b in self.relative_breakpoints],
            "slopes": [float(s) for s in self.slopes],
            "intercept": float(self.intercept),
            "r2": float(self.r2),
            "label": self.label,
            "fitted": [float(v) for v in np.asarray(self.fitted)],
            "depth": int(self.depth),
            "scale": float(self.scale),
            "n_points": int(self.n_points),
        }


def _prepare_curve(x: object, y: object, depth: object, min_points: object, owner: str):
    xa = _check_x(x, owner)
    ya = _as_1d(y, "y", owner)
    _same_length(xa, ya, "y", owner)
    depth_i = _positive_int(depth, "depth", owner)
    m = _check_min_points(min_points, owner)
    if np.any(np.isinf(ya)):
        raise _PhaseInputError(f"{owner}: y holds an infinite value at x={xa[np.isinf(ya)].tolist()}; "
                               "only NaN (= not applicable) may be missing.")
    return xa, ya, depth_i, m


def _kept_sorted(xa: np.ndarray, keep: np.ndarray, m: int, owner: str) -> tuple[np.ndarray, np.ndarray]:
    """Order of the kept points by x, after checking there are enough of them."""
    idx = np.flatnonzero(keep)
    need = _needed_points(m)
    if idx.size < need:
        raise _PhaseInputError(f"{owner} needs at least {need} non-NaN points for three segments of "
                               f"min_points={m}; got {idx.size}.")
    order = idx[np.argsort(xa[idx], kind="stable")]
    return order, xa[order]


def fit_three_segments(
    x: np.ndarray,
    y: np.ndarray,
    depth: int,
    thresholds: PhaseThresholds = _DEFAULT_THRESHOLDS,
    min_points: int = 2,
) -> PhaseFit:
    """Best continuous three-segment piecewise-linear fit, by exhaustive search over knot pairs.

    The model is ``f(x) = c0 + c1 x + c2 (x - k1)+ + c3 (x - k2)+`` (the hinge basis, continuous
    by construction). Every pair of knots ``k1 < k2`` at data positions is tried — segment 1
    holds the points ``x <= k1``, segment 2 ``k1 <= x <= k2`` and segment 3 ``x >= k2``, the knots
    counting in both segments they join — subject to each segment holding at least
    ``min_points`` points; each pair is an exact least-squares problem, and the pair with the
    smallest residual sum of squares wins (ties, e.g. a straight line: the first pair in
    (k1, k2) order). ``min_points = 2`` is the fewest that give a segment a slope of its own.

    Slopes are reported per unit relative depth (``x / depth``) and divided by the range of
    ``y``, so ``thresholds`` apply to any metric and model size.

    Args:
        x: Layer positions, (n,): ``pre`` = -1, then 0..L; any order, distinct.
        y: Curve values at ``x``, (n,); NaN entries (layers where the metric does not apply) are
            dropped.
        depth: Number of blocks L of the model.
        thresholds: Cuts used for the label.
        min_points: Fewest points per segment, counting shared knots (>= 2). The curve needs at
            least ``max(3 * min_points - 2, 5)`` non-NaN points.

    Returns:
        The :class:`PhaseFit`.

    Examples:
        >>> x = np.arange(-1, 13)
        >>> y = np.where(x < 2, 10 - 4 * (x + 1), np.where(x < 8, -2.0, -2 + 3 * (x - 8)))
        >>> fit = fit_three_segments(x, y, depth=12)
        >>> fit.breakpoints, fit.label, round(fit.r2, 12)
        ((2.0, 8.0), 'cliff-plateau-climb', 1.0)
    """
    owner = "fit_three_segments"
    xa, ya, depth_i, m = _prepare_curve(x, y, depth, min_points, owner)
    thresholds = _check_thresholds(thresholds, owner)
    order, xs = _kept_sorted(xa, ~np.isnan(ya), m, owner)
    ys = ya[order]
    design = _design(tuple(xs.tolist()), m)
    best = int(_best_pairs(design, ys[None])[0])
    i, j = design.pairs[best]
    coef = design.solve[best] @ ys
    scale = float(ys.max() - ys.min())
    slopes = _slopes_from_coef(coef[None], depth_i, np.array([scale]))[0]
    k1, k2 = float(xs[i]), float(xs[j])
    fitted_all = _hinge_design(xa, k1, k2) @ coef
    resid = ys - fitted_all[order]
    tss = float(np.sum((ys - ys.mean()) ** 2))
    rss = float(np.sum(resid ** 2))
    r2 = 1.0 if tss == 0.0 else 1.0 - rss / tss
    slopes_t = (float(slopes[0]), float(slopes[1]), float(slopes[2]))
    return PhaseFit(breakpoints=(k1, k2), slopes=slopes_t, intercept=float(coef[0]), r2=float(r2),
                    label=label_shape(slopes_t, thresholds), fitted=fitted_all, depth=depth_i, scale=scale,
                    n_points=int(xs.size))


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


def bootstrap_breakpoints(
    x: np.ndarray,
    per_image: np.ndarray,
    depth: int,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    thresholds: PhaseThresholds = _DEFAULT_THRESHOLDS,
    min_points: int = 2,
) -> dict[str, Any]:
    """Bootstrap CIs of the knots of the mean curve, resampling images.

    The point fit is :func:`fit_three_segments` of the mean curve ``per_image.mean(0)``.
    Resample b draws counts ``W_b ~ Multinomial(N, 1/N)`` over the images (the same trick and
    the same draws, for the same ``seed``, as :func:`vitdepth.metrics.stats.bootstrap_mean_ci`),
    its mean curve ``W_b @ per_image / N`` is refitted, and the knots' CI is the percentile
    interval of the refitted knots: the lower end is the ``(1 - level) / 2`` quantile rounded
    down to an observed knot, the upper end the ``(1 + level) / 2`` quantile rounded up, so the
    ends are layer positions. (A knot is a discrete argmin, and the bootstrap of an argmin is
    only approximately valid — it is honest when the fit is stable, and a wide interval or a low
    ``label_agreement`` says when it is not.)

    Args:
        x: Layer positions, (n,), as in :func:`fit_three_segments`.
        per_image: Per-image values, (N, n). A column may be NaN as a whole (a layer where the
            metric does not apply); it is dropped. A column NaN for only some images is an error.
        depth: Number of blocks L.
        n_boot: Number of resamples (>= 1).
        level: Confidence level in (0, 1).
        seed: Seed for ``np.random.default_rng``.
        thresholds: Cuts used for the labels.
        min_points: As in :func:`fit_three_segments`.

    Returns:
        JSON-ready dict: ``breakpoints`` and ``label`` of the point fit, ``breakpoints_ci``
        ``[[lo1, hi1], [lo2, hi2]]`` (layer positions), ``relative_breakpoints_ci`` (the same
        over ``depth``), ``label_agreement`` (fraction of resamples whose label equals the point
        fit's), ``n_boot``, ``level`` and ``n_images``.
    """
    owner = "bootstrap_breakpoints"
    xa = _check_x(x, owner)
    try:
        v = np.asarray(per_image, dtype=np.float64)
    except (TypeError, ValueError):
        raise _PhaseInputError(f"The 'per_image' parameter of {owner} must be an (N, len(x)) array of numbers. "
                               f"Got {type(per_image).__name__} instead.") from None
    if v.ndim != 2 or v.shape[1] != xa.shape[0]:
        raise _PhaseInputError(f"{owner}: per_image must have shape (N, len(x)) = (N, {xa.shape[0]}); "
                               f"got shape {v.shape}.")
    if v.shape[0] < 1:
        raise _PhaseInputError(f"{owner}: per_image has no images (shape {v.shape}).")
    depth_i = _positive_int(depth, "depth", owner)
    n_boot = _positive_int(n_boot, "n_boot", owner)
    if isinstance(level, bool) or not isinstance(level, Real) or not 0.0 < float(level) < 1.0:
        raise _PhaseInputError(f"The 'level' parameter of {owner} must be a float in the range (0, 1). "
                               f"Got {level!r} instead.")
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise _PhaseInputError(f"The 'seed' parameter of {owner} must be an int. Got {seed!r} instead.")
    thresholds = _check_thresholds(thresholds, owner)
    m = _check_min_points(min_points, owner)
    if np.any(np.isinf(v)):
        raise _PhaseInputError(f"{owner}: per_image holds infinite values; only NaN (= not applicable) may be missing.")
    nan = np.isnan(v)
    whole = nan.all(axis=0)
    partial = nan.any(axis=0) & ~whole
    if partial.any():
        j = int(np.flatnonzero(partial)[0])
        raise _PhaseInputError(
            f"{owner}: per_image column at x={xa[j]:g} is NaN for {int(nan[:, j].sum())} of {v.shape[0]} images; "
            "NaN is allowed only for whole columns (layers where the metric does not apply).")
    order, xs = _kept_sorted(xa, ~whole, m, owner)
    values = v[:, order]
    mean = values.mean(axis=0)
    point = fit_three_segments(xs, mean, depth_i, thresholds, m)

    n = values.shape[0]
    rng = np.random.default_rng(seed)
    boots = np.empty((n_boot, values.shape[1]))
    block = max(1, min(n_boot, _BLOCK_ELEMENTS // n))
    for start in range(0, n_boot, block):  # same block-wise draws as metrics.stats._bootstrap_means
        stop = min(start + block, n_boot)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start)
        boots[start:stop] = (counts @ values) / n

    design = _design(tuple(xs.tolist()), m)
    best = _best_pairs(design, boots)
    knots = xs[design.pairs[best]]  # (B, 2)
    coef = np.einsum("bkn,bn->bk", design.solve[best], boots)
    scale = boots.max(axis=1) - boots.min(axis=1)
    slopes = _slopes_from_coef(coef, depth_i, scale)
    labels = [label_shape(s, thresholds) for s in slopes]
    agreement = sum(lab == point.label for lab in labels) / n_boot

    level = float(level)
    q_lo, q_hi = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    lo = np.quantile(knots, q_lo, axis=0, method="lower")
    hi = np.quantile(knots, q_hi, axis=0, method="higher")
    ci = [[float(lo[0]), float(hi[0])], [float(lo[1]), float(hi[1])]]
    return {
        "breakpoints": [float(b) for b in point.breakpoints],
        "label": point.label,
        "breakpoints_ci": ci,
        "relative_breakpoints_ci": [[a / depth_i, b / depth_i] for a, b in ci],
        "label_agreement": float(agreement),
        "n_boot": n_boot,
        "level": level,
        "n_images": int(n),
    }


# --------------------------------------------------------------------------------------------
# Saturation and the information–task trade-off
# --------------------------------------------------------------------------------------------


def _json_float(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def saturation_layer(x: np.ndarray, acc: np.ndarray, fraction: float = 0.99) -> dict[str, Any]:
    """First layer whose probe accuracy reaches ``fraction`` of the best (effective depth, design §5).

    Args:
        x: Layer positions, (n,), any order, distinct.
        acc: Probe accuracy at ``x``, (n,); NaN layers are skipped. The best accuracy must be > 0.
        fraction: Fraction of the best accuracy to reach, in (0, 1].

    Returns:
        JSON-ready dict: ``layer_x`` (smallest x with ``acc >= fraction * best``), ``value`` (its
        accuracy), ``best``, ``best_x`` (smallest x attaining the best), ``fraction`` and
        ``threshold`` (``fraction * best``).

    Examples:
        >>> saturation_layer([-1, 0, 1, 2, 3], [0.1, 0.5, 0.795, 0.8, 0.79])["layer_x"]
        1.0
    """
    owner = "saturation_layer"
    xa = _check_x(x, owner)
    aa = _as_1d(acc, "acc", owner)
    _same_length(xa, aa, "acc", owner)
    frac = _fraction(fraction, owner)
    if np.any(np.isinf(aa)):
        raise _PhaseInputError(f"{owner}: acc holds an infinite value; only NaN (= not measured) may be missing.")
    ok = np.flatnonzero(~np.isnan(aa))
    if ok.size == 0:
        raise _PhaseInputError(f"{owner}: acc is NaN at every layer; nothing to saturate.")
    order = ok[np.argsort(xa[ok], kind="stable")]
    xs, a = xa[order], aa[order]
    best = float(a.max())
    if best <= 0:
        raise _PhaseInputError(f"{owner}: the best accuracy must be > 0 to take a fraction of it; got {best!r}.")
    threshold = frac * best
    first = int(np.argmax(a >= threshold))
    return {"layer_x": float(xs[first]), "value": float(a[first]), "best": best,
            "best_x": float(xs[int(np.argmax(a == best))]), "fraction": frac, "threshold": threshold}


def tradeoff_onset(x: np.ndarray, acc: np.ndarray, isi: np.ndarray, depth: int,
                   fraction: float = 0.99) -> dict[str, Any]:
    """Information–task trade-off onset (design §5): saturation of ``acc``, and ISI's rise after it.

    Past the onset the probe accuracy no longer improves, so whatever ISI still gains there
    (``isi_last - isi_at_onset``, ISI_L - ISI_sat) is information that no longer serves the task.

    Args:
        x: Layer positions, (n,), any order, distinct.
        acc: Probe accuracy at ``x``, (n,); NaN layers are skipped.
        isi: ISI at ``x``, (n,); NaN where not defined.
        depth: Number of blocks L (relative depth = x / depth).
        fraction: As in :func:`saturation_layer`.

    Returns:
        JSON-ready dict: ``layer_x``, ``relative_depth``, ``acc_at_onset``, ``best``,
        ``fraction``, ``isi_at_onset`` (ISI at the onset layer), ``isi_last`` (ISI at the last
        layer where it is defined), ``isi_last_x`` and ``isi_rise_after`` (``isi_last -
        isi_at_onset``). A value that is not defined (ISI NaN at the onset) is ``None``.

    Examples:
        >>> out = tradeoff_onset([0, 1, 2, 3, 4], [0.2, 0.6, 0.9, 0.9, 0.9], [1.0, 1.5, 2.0, 2.5, 3.5], depth=4)
        >>> out["layer_x"], out["relative_depth"], out["isi_rise_after"]
        (2.0, 0.5, 1.5)
    """
    owner = "tradeoff_onset"
    xa = _check_x(x, owner)
    ia = _as_1d(isi, "isi", owner)
    _same_length(xa, ia, "isi", owner)
    depth_i = _positive_int(depth, "depth", owner)
    if np.any(np.isinf(ia)):
        raise _PhaseInputError(f"{owner}: isi holds an infinite value; only NaN (= not defined) may be missing.")
    sat = saturation_layer(xa, acc, fraction)
    ok = np.flatnonzero(~np.isnan(ia))
    if ok.size == 0:
        raise _PhaseInputError(f"{owner}: isi is NaN at every layer.")
    last = ok[int(np.argmax(xa[ok]))]
    at = int(np.flatnonzero(xa == sat["layer_x"])[0])
    isi_at = float(ia[at])
    isi_last = float(ia[last])
    return {
        "layer_x": sat["layer_x"],
        "relative_depth": sat["layer_x"] / depth_i,
        "acc_at_onset": sat["value"],
        "best": sat["best"],
        "fraction": sat["fraction"],
        "isi_at_onset": _json_float(isi_at),
        "isi_last": isi_last,
        "isi_last_x": float(xa[last]),
        "isi_rise_after": _json_float(isi_last - isi_at),
    }


# --------------------------------------------------------------------------------------------
# Recommendations (plain-language text from a phases dict, as written to phases.json)
# --------------------------------------------------------------------------------------------


def _layer_word(x: float) -> str:
    return "pre" if x < 0 else f"{int(round(x))}"


def _freeze_span(x: float) -> str | None:
    """``layers 0–b`` for a freeze point b (``layer 0`` for 0); None before block 0 (nothing to freeze)."""
    b = int(round(x))
    if b < 0:
        return None
    return "layer 0" if b == 0 else f"layers 0–{b}"


def _runs(fit: dict[str, Any], thresholds: PhaseThresholds) -> list[tuple[str, float, float]]:
    """(segment class, start x, end x) of each run of equal neighbouring segment classes of a fit dict."""
    k1, k2 = (float(b) for b in fit["breakpoints"])
    xs = [float(v) for v in fit.get("x") or []]
    depth = fit.get("depth")
    lo = min(xs) if xs else -1.0
    hi = max(xs) if xs else float(depth if depth else k2)
    bounds = [lo, k1, k2, hi]
    runs: list[tuple[str, float, float]] = []
    for i, s in enumerate(fit["slopes"]):
        c = classify_slope(float(s), thresholds)
        if runs and runs[-1][0] == c:
            runs[-1] = (c, runs[-1][1], bounds[i + 1])
        else:
            runs.append((c, bounds[i], bounds[i + 1]))
    return runs


def freeze_recommendation(fit: dict[str, Any], curve: str, saturation: dict[str, Any] | None = None,
                          thresholds: PhaseThresholds = _DEFAULT_THRESHOLDS) -> str | None:
    """The fine-tuning freeze advice for one fitted curve, worded for its shape.

    The freeze point is where the curve stops changing for good or, failing that, where it starts
    changing: the start of a *tail* plateau (``rise-plateau``, ``cliff-plateau``, ...: the curve has
    levelled off there and stays flat to the last layer), else the end of a leading or middle plateau
    (``cliff-plateau-climb``, ``plateau-climb``: the layers before the curve moves again), else — no
    plateau at all (``monotone-rise``, ``cliff-climb``, ...) — the probe's saturation layer when known.
    A tail plateau is never described by its "end": it ends at the last layer.

    Args:
        fit: A fit as in ``phases.json`` (``breakpoints``, ``slopes``, ``label``; ``x`` and ``depth`` when known).
        curve: The curve's name, e.g. ``"probe_acc/mean"``.
        saturation: ``phases.json``'s saturation entry of the main token set (``layer``, ``fraction``), or None.
        thresholds: The cuts the fit was labelled with.

    Returns:
        One sentence, or None when nothing can be said (no plateau and no saturation layer).

    Examples:
        >>> fit = {"breakpoints": [1.0, 2.0], "slopes": [9.3, 1.6, 0.1], "label": "rise-plateau", "depth": 12}
        >>> rec = freeze_recommendation(fit, "probe_acc/cls")  # R R 0: the plateau is the tail, from layer 2
        >>> rec[:len("Freeze layers 0–2 when fine-tuning")], "levels off at layer 2" in rec, "end of the plateau" in rec
        ('Freeze layers 0–2 when fine-tuning', True, False)
    """
    label = fit.get("label", "?")
    sat_txt = ""
    if saturation and saturation.get("layer") is not None:
        sat_txt = (f"; the probe reaches {float(saturation.get('fraction', 0.99)):.0%} of its best accuracy at layer "
                   f"{saturation['layer']}")
    runs = _runs(fit, thresholds)
    flats = [i for i, r in enumerate(runs) if r[0] == "flat"]
    if label == "flat" or len(runs) == 1 and runs[0][0] == "flat":
        return (f"The {curve} curve is flat across depth (no phase to freeze by){sat_txt}."
                if sat_txt else None)
    tail = flats and flats[-1] == len(runs) - 1 and len(runs) > 1
    if tail:
        start = runs[-1][1]
        span = _freeze_span(start)
        if span is None:
            return None
        return (f"Freeze {span} when fine-tuning: the {label} fit of {curve} levels off at layer "
                f"{_layer_word(start)} and stays flat to the last layer{sat_txt}.")
    if flats:  # a leading or middle plateau: the curve moves again after it
        _, start, end = runs[flats[0]]
        span = _freeze_span(end)
        if span is None:
            return None
        where = "up to" if flats[0] == 0 else f"from layer {_layer_word(start)} to"
        return (f"Freeze {span} when fine-tuning: they lie before the end of the plateau (flat {where} layer "
                f"{_layer_word(end)}) of the {label} fit of {curve}, after which the curve changes again{sat_txt}.")
    if sat_txt:
        sat_x = layer_position(saturation["layer"])
        span = _freeze_span(sat_x)
        if span is None:
            return (f"The {label} fit of {curve} has no plateau, and the probe already saturates before block 0: "
                    "the blocks add little for this task.")
        return (f"Freeze {span} when fine-tuning: the {label} fit of {curve} has no plateau, and the probe reaches "
                f"{float(saturation.get('fraction', 0.99)):.0%} of its best accuracy at layer {saturation['layer']}.")
    return None


def layer_position(layer: object) -> float:
    """x position of a layer name: ``pre`` -> -1, ``"7"`` -> 7."""
    return -1.0 if str(layer) == "pre" else float(layer)  # type: ignore[arg-type]


def recommendations(phases: dict[str, Any], depth: int) -> list[str]:
    """Plain-language recommendations from a phases dict (the ``phases.json`` content, before or after writing).

    1. Freezing, from the ``probe_acc/mean`` fit (else ``token_sim``), worded for its shape
       (:func:`freeze_recommendation`).
    2. Truncation: FLOPs and latency saved by cutting at the saturation layer, against the accuracy change.
    3. The information–task trade-off: how much ISI still rises after the probe saturates.

    Args:
        phases: Dict with ``fits``, ``saturation``, and optionally ``thresholds``, ``truncation``, ``tradeoff_onset``.
        depth: Number of blocks L.

    Returns:
        The recommendations, in that order (empty when nothing applies).
    """
    recs: list[str] = []
    fits = phases.get("fits") or {}
    key = "probe_acc/mean" if "probe_acc/mean" in fits else ("token_sim" if "token_sim" in fits else None)
    try:
        thresholds = PhaseThresholds(**phases["thresholds"]) if phases.get("thresholds") else _DEFAULT_THRESHOLDS
    except (TypeError, VitdepthError):
        thresholds = _DEFAULT_THRESHOLDS
    if key is not None:
        sats = phases.get("saturation") or {}
        sat = sats.get("mean") or sats.get("cls")
        rec = freeze_recommendation(fits[key], key, sat, thresholds)
        if rec:
            recs.append(rec)
    trunc = phases.get("truncation")
    if trunc:
        recs.append(f"Truncating after block {trunc['layer']} of {depth} saves {trunc['flops_fraction_saved']:.0%} of "
                    f"the forward FLOPs ({trunc.get('latency_fraction_saved', float('nan')):.0%} measured latency) "
                    f"for a probe accuracy change of {-trunc['probe_acc_lost']:+.3f}.")
    onset = phases.get("tradeoff_onset")
    if onset and onset.get("isi_rise_after") is not None and onset["isi_rise_after"] > 0:
        recs.append(f"After layer {onset['layer']} the probe accuracy has saturated but {onset['isi_metric']} still "
                    f"rises by {onset['isi_rise_after']:.4f}: the remaining depth buys diffusion, not accuracy.")
    return recs
