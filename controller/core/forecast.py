"""Demand over the horizon that matters: a small ensemble of forecasters, each judged by its own errors.

Every tick each forecaster predicts the demand sample that will be seen one horizon ahead (a node
boot, the wait for the next tick, and the rate window's lag); when that time comes, the log error
`log(seen / predicted)` goes into the forecaster's decayed error histogram. The bound a forecaster
offers is its prediction times the `coverage` quantile of its own errors (a conformal bound: it covers
that share of this workload's real surprises, whatever their shape). The ensemble plans with the
forecaster whose bounds have lately been tightest for the same coverage, so a smooth ramp is planned
by a trend, per-minute noise by a robust level, on/off bursts by the recent peak, and recurring spikes
by the profile that saw them come before. Nothing here knows a scenario: each workload's own errors choose.

Pure and small: the state is tuples that decide carries from tick to tick (the store keeps them).
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

from controller.core import trends
from controller.core.profiles import Profile, observe, peak_around
from controller.core.trends import MAX_GROWTH

HOUR_S = 3600.0
DAY_S = 86400.0
WEEK_S = 7 * DAY_S


class Source(enum.StrEnum):
    """The forecasters of the ensemble."""

    LAST = "last"
    """The latest sample: right when demand moves in steps that last."""
    LEVEL = "level"
    """The median of the last few samples: right when single samples are noise."""
    BASE = "base"
    """The median of the last quarter hour: right when spikes come and go within a boot."""
    RECENT = "recent"
    """The highest sample of the last horizon: right when bursts come and go within one and recur."""
    TREND = "trend"
    """A straight line through the trend window, carried to the horizon: linear ramps."""
    GROWTH = "growth"
    """A straight line through the log of demand: exponential ramps (flash crowds)."""
    HOURLY = "hourly"
    BIHOURLY = "bihourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    """Profiles of the peaks seen at the same time of hour, two hours, day and week."""


# -- error records --------------------------------------------------------------------------------------
ERROR_LOW = -1.5
ERROR_BIN = 0.05
ERROR_BINS = 90
"""Log errors from -1.5 (a forecast 4.5x too high) to +3 (20x too low); beyond them, the edge bins."""


@dataclass(frozen=True, slots=True)
class Errors:
    """One forecaster's log errors, exponentially forgotten: every tick's error for its bias, and the
    highest error of each horizon-long block for its tail.

    New errors enter with weight `2 ** ((t - origin) / half_life)` instead of fading every old one each
    tick (one bin changes per error); the weights are rebased when they grow large.
    """

    weights: tuple[float, ...] = (0.0,) * ERROR_BINS
    """Block maxima per bin."""
    total: float = 0.0
    """Weight of the block maxima."""
    ticks: float = 0.0
    """Weight of the tick errors."""
    sum: float = 0.0
    """Weighted sum of the tick errors: their mean is `sum / ticks`."""
    origin: float | None = None


ERROR_HIGH = ERROR_LOW + ERROR_BINS * ERROR_BIN


def record(e: Errors, t: float, error: float, *, block: float | None, half_life_s: float) -> Errors:
    """Add one tick's error, and the maximum of a block that closed with it (if one did)."""
    origin = t if e.origin is None else e.origin
    weights, total, ticks, total_sum = e.weights, e.total, e.ticks, e.sum
    exponent = (t - origin) / half_life_s
    if exponent > 60.0:  # rebase before the weights overflow
        shrink = 2.0**-exponent
        weights = tuple(w * shrink for w in weights)
        total, ticks, total_sum = total * shrink, ticks * shrink, total_sum * shrink
        origin, exponent = t, 0.0
    w = 2.0**exponent
    if block is not None:
        i = min(ERROR_BINS - 1, int((min(ERROR_HIGH, max(ERROR_LOW, block)) - ERROR_LOW) / ERROR_BIN))
        weights = (*weights[:i], weights[i] + w, *weights[i + 1 :])
        total += w
    return Errors(weights, total, ticks + w, total_sum + w * min(ERROR_HIGH, max(ERROR_LOW, error)), origin)


def count(e: Errors, t: float, *, half_life_s: float) -> float:
    """The effective number of errors remembered at time t."""
    if e.origin is None:
        return 0.0
    return e.total * math.pow(2.0, -(t - e.origin) / half_life_s)


def quantile(e: Errors, q: float) -> float:
    """The log error not exceeded with probability q, linear within its bin."""
    if e.total <= 0:
        return 0.0
    need = q * e.total
    # Cumulative weights in C, then the first bin that reaches `need` (asked several times a tick).
    cumulative = list(itertools.accumulate(e.weights))
    i = bisect.bisect_left(cumulative, need)
    while i < ERROR_BINS and e.weights[i] <= 0:  # an empty bin holds no quantile
        i += 1
    if i >= ERROR_BINS:
        return ERROR_HIGH
    below = cumulative[i] - e.weights[i]
    return ERROR_LOW + (i + (need - below) / e.weights[i]) * ERROR_BIN


def bias(e: Errors) -> float:
    """The mean tick error: positive where the forecaster runs low."""
    return e.sum / e.ticks if e.ticks > 0 else 0.0


PROFILES: tuple[tuple[Source, float, float, float], ...] = (
    (Source.HOURLY, HOUR_S, 60.0, 300.0),
    (Source.BIHOURLY, 2 * HOUR_S, 60.0, 300.0),
    (Source.DAILY, DAY_S, 300.0, 600.0),
    (Source.WEEKLY, WEEK_S, 1800.0, 1800.0),
)
"""(source, period, bin, reach): what is learned of each period, and how far around a time it looks."""


# -- the ensemble ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Model:
    """What the ensemble remembers of one workload's demand."""

    samples: tuple[tuple[float, float], ...] = ()
    """(time, demand) over the longest window a forecaster looks at."""
    pending: tuple[tuple[float, tuple[float, ...], int], ...] = ()
    """(due time, each forecaster's prediction, the regime it was made in) not yet checked."""
    errors: tuple[Errors, ...] = ()
    """Per regime and forecaster (`REGIMES` x `SOURCES`): the errors of its forecasts."""
    blocks: tuple[tuple[float, float], ...] = ()
    """Per regime and forecaster: (start, highest error so far) of the block being gathered."""
    tails: tuple[tuple[float, float], ...] = ()
    """Per regime and forecaster: (weight of its error record, the tail quantile) as last computed: the
    tail moves only when a block closes, and it is asked every tick."""
    profiles: tuple[Profile, ...] = ()
    peaks: tuple[tuple[float, float], ...] = ()
    """(minute, highest demand in it) over the peak window: how high demand has lately gone."""
    queue: tuple[float, float] = (0.0, 0.0)
    """(time, queue depth) at the last sample: how fast a queue grows tells what arrives beyond the rate."""


@dataclass(frozen=True, slots=True)
class Settings:
    trend_window_s: float
    level_window_s: float
    base_window_s: float
    half_life_s: float
    coverage: float
    min_errors: float
    cold_margin: float
    peak_window_s: float
    peak_margin: float
    """A bound goes at most this far (log) above the higher of its prediction and the recent peak."""
    floor_rps: float
    """Demand within a few requests per second of zero is compared in absolute terms, not as ratios."""
    rate_window_s: float = 60.0
    """The window the demand rate is averaged over: a step in arrivals shows as a climb this long."""


@dataclass(frozen=True, slots=True)
class Forecast:
    now_rps: float
    """The latest demand sample."""
    expected_rps: float
    """The chosen forecaster's prediction for the horizon."""
    bound_rps: float
    """The demand to plan for: the prediction times the coverage quantile of its errors."""
    source: Source | None
    """The forecaster chosen; None while no forecaster has enough errors to be judged."""
    margin: float
    """The log headroom applied (the coverage quantile of the chosen forecaster's errors)."""
    follows: bool = True
    """Following the latest level has been about as good as the best forecaster: this workload's jumps
    have lasted (where they revert, the base level does better, and a jump is not chased)."""
    held_rps: float | None = None
    """The part of the bound whose capacity is held against release, where it is not all of it:
    capacity bought ahead of a growth is wanted only while the growth lasts."""

    @property
    def held(self) -> float:
        return self.bound_rps if self.held_rps is None else self.held_rps


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    return float(s[n // 2]) if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def predictions(m: Model, at: float, *, horizon_s: float, settings: Settings) -> tuple[float, ...]:
    """Each forecaster's prediction of the demand sample one horizon ahead (NaN where it has none)."""
    latest = m.samples[-1][1]
    recent = m.samples[bisect.bisect_left(m.samples, at - settings.trend_window_s, key=_time) :]
    level_from = bisect.bisect_left(m.samples, at - settings.level_window_s, key=_time)
    level = _median([v for _, v in m.samples[level_from:]])
    base = _median([v for _, v in m.samples])
    eps = settings.floor_rps
    line, logs = trends.lines(recent, eps) or (None, None)
    trend = max(0.0, line[0] + line[1] * horizon_s) if line is not None else math.nan
    growth = (
        max(0.0, math.exp(logs[0] + min(MAX_GROWTH, max(-MAX_GROWTH, logs[1] * horizon_s))) - eps)
        if logs is not None
        else math.nan
    )
    seasonal = (
        tuple(
            peak_around(p, at + horizon_s, reach, latest) if p.complete(at) else math.nan
            for p, (_, _, _, reach) in zip(m.profiles, PROFILES, strict=True)
        )
        if m.profiles
        else (math.nan,) * len(PROFILES)  # seasonality off: no profiles are learned
    )
    recent_peak = max(map(_value, m.samples[bisect.bisect_left(m.samples, at - horizon_s, key=_time) :]))
    return (latest, level, base, recent_peak, trend, growth, *seasonal)


SOURCES: tuple[Source, ...] = (
    Source.LAST,
    Source.LEVEL,
    Source.BASE,
    Source.RECENT,
    Source.TREND,
    Source.GROWTH,
    *(s for s, _, _, _ in PROFILES),
)


_time = itemgetter(0)
_value = itemgetter(1)
"""(time, value) pairs: keys in C, asked many times a tick."""


REGIMES = 2
"""Errors are kept apart by where demand stood against its base when the forecast was made: at it
(regime 0), or above it by more than `ELEVATED` (regime 1). The surprises that come from a base (a
spike starting) are not the ones that come from a spike (it ending), and a bound learned from the first
must not be stacked on top of the second."""
ELEVATED = math.log(1.5)
MINUTE_S = 60.0


def _score(
    m: Model,
    at: float,
    seen: float,
    due: tuple[float, tuple[float, ...], int],
    *,
    block_s: float,
    settings: Settings,
) -> tuple[tuple[Errors, ...], tuple[tuple[float, float], ...]]:
    """Fold one due forecast's errors into each forecaster's block; a block closed goes on record.

    Forecasts a tick apart share most of their horizon, so one surprise shows in a whole horizon of
    them: judged per block, a single step counts once, while noise within every block still counts."""
    errors = m.errors or tuple(Errors() for _ in range(REGIMES * len(SOURCES)))
    blocks = m.blocks or tuple((math.nan, math.nan) for _ in range(REGIMES * len(SOURCES)))
    _, predicted, regime = due
    eps, half_life_s = settings.floor_rps, settings.half_life_s
    isnan, log = math.isnan, math.log  # locals: this loop runs every tick per forecaster
    block_now = at // block_s
    out_e, out_b = list(errors), list(blocks)
    for k, p in enumerate(predicted, regime * len(SOURCES)):
        if isnan(p):
            continue
        error = seen - log(p + eps)
        start, top = blocks[k]
        closed = not isnan(start) and block_now != start // block_s
        out_e[k] = record(errors[k], at, error, block=top if closed else None, half_life_s=half_life_s)
        out_b[k] = (at, error) if closed or isnan(start) else (start, max(top, error))
    return tuple(out_e), tuple(out_b)


def _aligned(m: Model) -> Model:
    """The model, less the errors and pending forecasts of another set of forecasters (a state stored
    by an earlier version): their places no longer line up, so those forecasters start cold."""
    n = len(SOURCES)  # the pending forecasts were all made by one version: the oldest tells
    if len(m.errors) in (0, REGIMES * n) and (not m.pending or len(m.pending[0][1]) == n):
        return m
    return Model(m.samples, (), (), (), (), m.profiles, m.peaks, m.queue)


def remember(
    m: Model,
    at: float,
    demand: float,
    *,
    block_s: float,
    settings: Settings,
    seasonal: bool,
    arrived: float = 0.0,
    queue: float = 0.0,
) -> Model:
    """Add a demand sample and the queue depth seen with it: score the forecasts now due (against
    `arrived` where a growing queue shows more arriving than the windowed rate does), learn the
    profiles."""
    m = _aligned(m)
    keep_from = bisect.bisect_left(
        m.samples, at - max(settings.trend_window_s, settings.base_window_s), key=_time
    )
    samples = (*m.samples[keep_from:], (at, demand))
    pending = m.pending
    seen = math.log(max(demand, arrived) + settings.floor_rps)
    while pending and pending[0][0] <= at:
        errors, blocks = _score(m, at, seen, pending[0], block_s=block_s, settings=settings)
        m = Model(m.samples, m.pending, errors, blocks, m.tails, m.profiles, m.peaks, m.queue)
        pending = pending[1:]
    profiles = m.profiles
    if seasonal:
        profiles = tuple(
            observe(p, at, demand)
            for p in (m.profiles or tuple(Profile.empty(period, b) for _, period, b, _ in PROFILES))
        )
    # Built directly: dataclasses.replace walks the fields, and this runs every tick.
    peaks = _peaks(m.peaks, at, demand, settings)
    return Model(samples, pending, m.errors, m.blocks, m.tails, profiles, peaks, (at, queue))


def _peaks(
    peaks: tuple[tuple[float, float], ...], at: float, demand: float, settings: Settings
) -> tuple[tuple[float, float], ...]:
    minute = at // MINUTE_S
    if peaks and peaks[-1][0] == minute:
        return peaks if demand <= peaks[-1][1] else (*peaks[:-1], (minute, demand))
    drop = bisect.bisect_left(peaks, minute - settings.peak_window_s // MINUTE_S, key=_time)
    return (*peaks[drop:], (minute, demand))


def peak(m: Model) -> float:
    """The highest demand of the peak window (and of the samples kept, whichever is longer)."""
    return max(max(map(_value, m.peaks), default=0.0), max(map(_value, m.samples), default=0.0))


def _regime(predicted: tuple[float, ...], eps: float) -> int:
    latest, base = predicted[0], predicted[SOURCES.index(Source.BASE)]
    return 1 if math.log(latest + eps) - math.log(base + eps) > ELEVATED else 0


_TREND, _GROWTH = SOURCES.index(Source.TREND), SOURCES.index(Source.GROWTH)
_LINES = (Source.TREND, Source.GROWTH)


def _growth(m: Model, at: float, horizon_s: float, settings: Settings) -> float:
    return trends.sure_growth(
        m.samples, at, horizon_s, window_s=settings.rate_window_s,
        trend_window_s=settings.trend_window_s, eps=settings.floor_rps,
    )  # fmt: skip


def _highest(
    m: Model, predicted: tuple[float, ...], at: float, horizon_s: float, settings: Settings
) -> float:
    """The highest prediction of the levels and profiles, or the latest demand carried by a growth every
    recent rate window showed: a line through minutes of noise, or through the climb a step leaves in
    a windowed rate, goes on climbing where demand does not, and would open the ceiling for every
    surprise learned on the way up; a ramp that goes on climbing grows in every window."""
    others = predicted[:_TREND] + predicted[_GROWTH + 1 :]
    rest = max((p for p in others if not math.isnan(p)), default=0.0)
    return max(rest, _growth(m, at, horizon_s, settings))


def _cold(
    m: Model, predicted: tuple[float, ...], at: float, horizon_s: float, settings: Settings
) -> Forecast:
    """Too few errors to judge any forecaster: the highest of the latest, robust, base and recent levels;
    while demand grows exponentially (a flash crowd), that growth carried over the horizon.

    Unjudged, the exponential fit is too wild to take whole, so only the growth every recent rate window
    showed is carried, and capacity bought for it is wanted only while the growth lasts (`held_rps`
    leaves it out). A straight line is not carried: a step in arrivals reaches a windowed rate as a climb
    one window long, and a line through that climb, carried over a horizon several windows long, buys
    capacity for a level that never comes; a ramp that goes on climbing grows in every window, and is
    carried by its growth."""
    eps, latest = settings.floor_rps, m.samples[-1][1]
    level = max(p for p in predicted[:_TREND] if not math.isnan(p))
    expected = max(level, _growth(m, at, horizon_s, settings))
    lift = math.exp(settings.cold_margin)
    return Forecast(
        latest, expected, (expected + eps) * lift - eps, None, settings.cold_margin,
        held_rps=(level + eps) * lift - eps,
    )  # fmt: skip


def _tail_slope(e: Errors, top: float, at: float, settings: Settings) -> float:
    """Log error per e-fold of tail probability, from the last doubling below the coverage quantile
    (`top`): carries a bound past the errors seen, where the coverage asked is beyond what they tell."""
    c = min(settings.coverage, 1.0 - 2.0 / count(e, at, half_life_s=settings.half_life_s))
    return max(0.0, top - quantile(e, 1.0 - 2.0 * (1.0 - c))) / math.log(2.0)


def forecast(
    m: Model, at: float, *, horizon_s: float, settings: Settings, shrink: float = 0.0
) -> tuple[Forecast, Model]:
    """The bound to plan for, and the model with this tick's predictions pending. `shrink` is how far
    (log) the error budget asks the tail left uncovered to shrink below `1 - coverage`
    (`budget.shrink`): the chosen bound goes that far past its coverage quantile, at the slope its
    tail showed over the last doubling of tail probability."""
    predicted = predictions(m, at, horizon_s=horizon_s, settings=settings)
    eps = settings.floor_rps
    regime = _regime(predicted, eps)
    best: tuple[float, Source, float, float, int] | None = None
    latest_slack: float | None = None
    tails = list(m.tails or ((math.nan, 0.0),) * (REGIMES * len(SOURCES)))
    errors = m.errors or ()
    for i, (source, p) in enumerate(zip(SOURCES, predicted, strict=True)):
        if math.isnan(p) or not errors:
            continue
        # Judged by the errors of the regime demand is in: a regime not yet seen starts cold.
        k = regime * len(SOURCES) + i
        e = errors[k]
        n = count(e, at, half_life_s=settings.half_life_s)
        if n < settings.min_errors:
            continue
        # A surprise seen once is not yet a pattern: the tail covered must rest on two blocks at least,
        # and until the errors can tell the coverage asked, part of the cold margin stays (less as they
        # come).
        if tails[k][0] != e.total:
            tails[k] = (e.total, quantile(e, min(settings.coverage, 1.0 - 2.0 / n)))
        margin = max(tails[k][1], settings.cold_margin * (1.0 - n * (1.0 - settings.coverage) / 2.0))
        # The bound's expected distance above what comes, in log terms, is the cost of trusting it; a
        # forecaster that is right only after a large correction for its bias counts that correction
        # too (its bias is of the past, and may not hold when demand changes course).
        b = bias(e)
        slack = margin - b + 0.5 * abs(b)
        if source is Source.LAST:
            latest_slack = slack
        if best is None or slack < best[0]:
            best = (slack, source, p, margin, k)
    pending = (*m.pending, (at + horizon_s, predicted, regime))
    m = Model(m.samples, pending, m.errors, m.blocks, tuple(tails), m.profiles, m.peaks, m.queue)
    latest = m.samples[-1][1]
    if best is None:
        return _cold(m, predicted, at, horizon_s, settings), m
    slack, source, expected, margin, k = best
    if shrink > 0:
        margin += shrink * _tail_slope(errors[k], tails[k][1], at, settings)
    # Errors learned while demand rose to a peak (a spike starting, a recovery) must not lift the bound
    # far above that peak from a level that already includes it: the margin covers surprises up to what
    # demand reached lately, what a level or a profile now predicts, or where a growth seen in every
    # recent window goes (and the chosen forecaster's own prediction, unless it is a line: a line
    # through a step's climb goes on climbing on the plateau, whichever forecaster it is), plus a little.
    lift = math.exp(settings.peak_margin)
    uncapped = (expected + eps) * math.exp(margin)
    ceiling = 0.0 if source in _LINES else (expected + eps) * lift
    # The peak and the other predictions only lift the ceiling: asked only where it binds.
    if uncapped > ceiling:
        ceiling = max(ceiling, (peak(m) + eps) * lift)
    if uncapped > ceiling:
        ceiling = max(ceiling, (_highest(m, predicted, at, horizon_s, settings) + eps) * lift)
    bound = max(0.0, min(uncapped, ceiling) - eps)
    follows = latest_slack is None or latest_slack <= slack + ERROR_BIN
    return Forecast(latest, expected, bound, source, margin, follows), m
