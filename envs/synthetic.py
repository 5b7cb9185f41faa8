"""Embedded synthetic market: a seeded, regime-switching OHLCV generator (no download needed).

Each regime has its own drift, volatility, lag-1 return autocorrelation and volume level, and a
persistent Markov chain switches between them. The regimes are built so that each one favours a
different strategy of :mod:`.strategies` (see ``RegimeSpec.favours``), so knowing the regime is
worth money, and so that each leaves an observable fingerprint in causal features (volatility,
drift, autocorrelation sign, volume), so the regime can be learned from the past alone.

Two regime tables ship with it (``SyntheticMarketConfig.preset``):

- ``"default"`` (``DEFAULT_REGIMES``): six regimes with loud fingerprints; a few dozen bars of
  volatility and volume name the regime.
- ``"slow"`` (``SLOW_REGIMES``): a market where evidence is slow. Four regimes share volatility and
  volume level and differ only in drift (bull, bear) and lag-1 autocorrelation (trend, revert), by so
  little per bar that a 32-bar window cannot tell them apart (over 32 bars the drift moves the mean
  return by 0.28 of its standard error; the likelihood of the true parameters over the window names
  the regime half the time, the drift's sign 6 times in 10), while a belief carried over the hundreds
  of bars a regime lasts (600 on average) can (9 times in 10 once a regime has held 300 bars). It
  separates a policy that sees one window from one that accumulates evidence; :mod:`.regime_filter`
  computes what the latter can reach at best (the "filter bound").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import tyro


@dataclass(frozen=True)
class RegimeSpec:
    """One market regime: a stationary AR(1) return process with its own volume level."""

    name: str
    """Short name, e.g. "bull"."""
    drift: float
    """Mean log return per bar (0.001 = 0.1% per bar)."""
    volatility: float
    """Standard deviation of the log return per bar."""
    ar: tuple[float, ...]
    """AR coefficients of the demeaned returns for lags 1, 2, ...: (-0.45,) mean-reverts, (0.35,) trends."""
    mean_duration: float
    """Expected number of bars the regime lasts once entered (Markov stay probability 1 - 1/d)."""
    volume_level: float
    """Offset of log volume from the market's base level (regime fingerprint)."""
    favours: str = ""
    """The strategy this regime is designed to reward (documentation only)."""

    def __post_init__(self) -> None:
        if not self.volatility > 0:
            raise ValueError(f"RegimeSpec {self.name!r}: volatility={self.volatility} must be > 0")
        roots = np.roots(np.r_[1.0, -np.asarray(self.ar, dtype=float)]) if self.ar else np.array([])
        if np.any(np.abs(roots) >= 1.0):
            raise ValueError(
                f"RegimeSpec {self.name!r}: ar={self.ar} is not stationary (a root of the AR polynomial "
                "lies on or outside the unit circle); use smaller coefficients"
            )
        if not self.mean_duration >= 1:
            raise ValueError(f"RegimeSpec {self.name!r}: mean_duration={self.mean_duration} must be >= 1 bar")

    @property
    def innovation_std(self) -> float:
        """Standard deviation of the AR innovation that gives the returns their stationary `volatility`."""
        return self.volatility / _innovation_scale(self.ar)


# The regime tables list one regime a line, RegimeSpec's fields in order:
#   name, drift, volatility, ar, mean_duration, volume_level, favours.

# Calibrated so that, at the default cost, each regime's best strategy (by mean PnL) is `favours`,
# and the hindsight label distribution stays spread out (no class above 50%).
# fmt: off
DEFAULT_REGIMES: tuple[RegimeSpec, ...] = (
    RegimeSpec("bull",   0.0012, 0.010, (),                             150, -0.1,  "long"),
    RegimeSpec("bear",  -0.0018, 0.018, (),                             100,  0.45, "short"),
    RegimeSpec("range",  0.0,    0.008, (-0.45,),                       120, -0.3,  "mean_reversion"),
    RegimeSpec("swing",  0.0,    0.013, (0.35,),                        120,  0.25, "momentum"),
    RegimeSpec("chop",   0.0,    0.024, (0.25, -0.2, -0.3, -0.3, -0.3),  80,  0.8,  "flat"),
    RegimeSpec("quiet",  0.0005, 0.004, (),                             150, -0.6,  "vol_target"),
)
# fmt: on


# A market where evidence is slow: the regimes share volatility and volume level, so only the drift and the
# lag-1 autocorrelation of returns tell them apart, by a few hundredths of a standard deviation per bar.
# Calibrated at n_bars 40,000, horizon 8, cost 0.0005 (tests/test_market.py, tests/test_regime_filter.py):
# - |drift| 0.0005 (0.05 return standard deviations a bar) makes long (short) the bull (bear) regime's best
#   strategy, by 6 bp a trade over the next (vol_target) in expectation;
# - trend's ar 0.3 is about the least at which momentum beats breakout, the other trend follower, by more than
#   noise (by 10 bp a trade in expectation; at ar 0.1-0.2 the two tie, so a seed's regime oracle picks either);
#   it makes trend the loudest regime (a 32-bar window names it 3 times in 4). revert's -0.12 is enough for
#   mean_reversion (28 bp a trade; every other rule loses);
# - with 600-bar regimes the filter bound (:mod:`.regime_filter`) earns 46% of the regime oracle's held-out PnL
#   pooled over seeds 0-47, the same filter over the last 32 bars alone 17% (per seed the share varies widely:
#   a test split holds about 13 regimes).
# fmt: off
SLOW_REGIMES: tuple[RegimeSpec, ...] = (
    RegimeSpec("bull",    0.0005, 0.01, (),       600, 0.0, "long"),
    RegimeSpec("bear",   -0.0005, 0.01, (),       600, 0.0, "short"),
    RegimeSpec("trend",   0.0,    0.01, (0.3,),   600, 0.0, "momentum"),
    RegimeSpec("revert",  0.0,    0.01, (-0.12,), 600, 0.0, "mean_reversion"),
)
# fmt: on

REGIME_PRESETS: dict[str, tuple[RegimeSpec, ...]] = {"default": DEFAULT_REGIMES, "slow": SLOW_REGIMES}
"""The built-in regime tables, by ``SyntheticMarketConfig.preset``."""


class _PresetRegimes(tuple):
    """A preset's regime table as SyntheticMarketConfig resolved it, as opposed to regimes a caller chose.

    tyro (defaults from an instance) and ``dataclasses.replace`` hand a frozen config's resolved fields back
    to the constructor; the mark lets a new ``preset`` given with them still choose the table. It compares and
    hashes as the plain tuple, so configs and their cache keys are unaffected.
    """

    __slots__ = ()


@dataclass(frozen=True)
class SyntheticMarketConfig:
    """Options of the embedded synthetic market. Frozen (hashable) so that builds can be cached."""

    n_bars: int = 40_000
    """Number of OHLCV bars to generate."""
    seed: int = 0
    """Seed of the market itself (independent of the environment's reset seed)."""
    preset: Literal["default", "slow"] = "default"
    """The built-in regime table: "default" (six regimes with loud volatility and volume fingerprints) or "slow"
    (four regimes that differ only in drift and autocorrelation, too weakly for a 32-bar window to tell apart;
    a belief over the hundreds of bars a regime lasts can)."""
    # A tuple of RegimeSpec is set from Python or a config file, not from flags.
    regimes: Annotated[tuple[RegimeSpec, ...] | None, tyro.conf.Suppress] = None
    """The regimes; None = the preset's. The Markov chain leaves regime k with probability 1/mean_duration, to
    any other uniformly. Always a tuple once constructed (the preset's table when None was given)."""
    start_price: float = 100.0
    """Close of the bar before the first bar."""
    start_date: str = "2000-01-03"
    """Timestamp of the first bar; bars are business days (252 per year)."""
    base_volume: float = 1e6
    """Median volume of a bar in a regime with volume_level 0."""

    def __post_init__(self) -> None:
        if not isinstance(self.n_bars, int) or self.n_bars < 2:
            raise ValueError(f"SyntheticMarketConfig: n_bars={self.n_bars!r} must be an int >= 2")
        if not isinstance(self.seed, int | np.integer):
            raise ValueError(f"SyntheticMarketConfig: seed={self.seed!r} must be an int")
        if self.preset not in REGIME_PRESETS:
            raise ValueError(
                f"SyntheticMarketConfig: preset={self.preset!r}; expected one of {list(REGIME_PRESETS)}"
            )
        table = REGIME_PRESETS[self.preset]
        regimes = self.regimes
        # None, a table resolved from a preset (handed back by tyro or dataclasses.replace), or the preset's own
        # table (as a saved config lists it) all mean "the preset's regimes".
        if (
            regimes is None
            or isinstance(regimes, _PresetRegimes)
            or (isinstance(regimes, tuple) and regimes == table)
        ):
            object.__setattr__(self, "regimes", _PresetRegimes(table))
        elif self.preset != "default":
            raise ValueError(
                f"SyntheticMarketConfig: preset={self.preset!r} and explicit regimes conflict; give regimes "
                "(with preset 'default') or a preset, not both"
            )
        if not isinstance(self.regimes, tuple) or len(self.regimes) < 2:
            raise ValueError("SyntheticMarketConfig: regimes must be a tuple of at least 2 RegimeSpec")
        if not all(isinstance(r, RegimeSpec) for r in self.regimes):
            raise ValueError("SyntheticMarketConfig: every entry of regimes must be a RegimeSpec")
        if not self.start_price > 0 or not self.base_volume > 0:
            raise ValueError("SyntheticMarketConfig: start_price and base_volume must be > 0")

    @property
    def regime_names(self) -> tuple[str, ...]:
        """Names of the regimes, index = regime id."""
        return tuple(r.name for r in self.regimes)


def _regime_path(n_bars: int, regimes: tuple[RegimeSpec, ...], rng: np.random.Generator) -> np.ndarray:
    """Persistent Markov chain: geometric stays (mean = mean_duration), then a uniform jump elsewhere."""
    k = len(regimes)
    path = np.empty(n_bars, dtype=np.int64)  # (T,)
    pos = 0
    current = int(rng.integers(k))
    while pos < n_bars:
        stay = int(rng.geometric(1.0 / regimes[current].mean_duration))
        path[pos : pos + stay] = current
        pos += stay
        nxt = int(rng.integers(k - 1))
        current = nxt + (nxt >= current)  # uniform over the other regimes
    return path


def _innovation_scale(ar: tuple[float, ...]) -> float:
    """sqrt(sum of squared impulse responses): the stationary std of an AR process with unit innovations."""
    psi = np.zeros(512)  # (L,) impulse response; coefficients decay geometrically for a stationary AR
    psi[0] = 1.0
    for j in range(1, psi.size):
        psi[j] = sum(c * psi[j - 1 - i] for i, c in enumerate(ar) if j - 1 - i >= 0)
    return float(np.sqrt(np.sum(psi**2)))


def _ar_returns(regime: np.ndarray, regimes: tuple[RegimeSpec, ...], rng: np.random.Generator) -> np.ndarray:
    """Demeaned returns x_t = sum_j ar_j x_{t-j} + s eps_t, with each regime's own coefficients.

    The innovation scale s makes each regime's stationary return volatility equal its `volatility`
    whatever its autocorrelation structure.
    """
    n = regime.shape[0]
    order = max((len(r.ar) for r in regimes), default=0)
    coeffs = [list(r.ar) + [0.0] * (order - len(r.ar)) for r in regimes]
    scale = [r.innovation_std for r in regimes]
    shocks = rng.standard_normal(n).tolist()
    history = [0.0] * order  # most recent first
    out = np.empty(n)  # (T,)
    for i, k in enumerate(regime.tolist()):  # the recursion is sequential; 40k scalar steps take ~40 ms
        x = scale[k] * shocks[i] + sum(c * h for c, h in zip(coeffs[k], history, strict=True))
        if order:
            history = [x, *history[:-1]]
        out[i] = x
    return out


def generate_synthetic_market(config: SyntheticMarketConfig | None = None) -> pd.DataFrame:
    """Generate OHLCV bars and the true regime of each bar.

    Returns a DataFrame indexed by business-day timestamps with float columns
    ``open, high, low, close, volume`` and an int column ``regime`` (index into
    ``config.regimes``). All randomness comes from ``numpy.random.default_rng(config.seed)``.
    """
    config = SyntheticMarketConfig() if config is None else config
    rng = np.random.default_rng(config.seed)
    n = config.n_bars
    regime = _regime_path(n, config.regimes, rng)  # (T,)

    drift = np.array([r.drift for r in config.regimes])[regime]  # (T,)
    vol = np.array([r.volatility for r in config.regimes])[regime]  # (T,)
    volume_level = np.array([r.volume_level for r in config.regimes])[regime]  # (T,)
    log_ret = drift + _ar_returns(regime, config.regimes, rng)  # (T,)

    log_close = np.log(config.start_price) + np.cumsum(log_ret)  # (T,)
    prev_log_close = np.concatenate(([np.log(config.start_price)], log_close[:-1]))  # (T,)
    # The open gaps a little from the previous close; the bar's extremes extend beyond open/close
    # by half-normal amounts that scale with the regime's volatility (wider bars in wild regimes).
    log_open = prev_log_close + 0.15 * vol * rng.standard_normal(n)  # (T,)
    upper = np.maximum(log_open, log_close) + 0.5 * vol * np.abs(rng.standard_normal(n))  # (T,)
    lower = np.minimum(log_open, log_close) - 0.5 * vol * np.abs(rng.standard_normal(n))  # (T,)
    # Volume rises with the regime's level and with the size of the bar's move.
    log_volume = (
        np.log(config.base_volume)
        + volume_level
        + 0.3 * np.abs(log_ret - drift) / vol
        + 0.25 * rng.standard_normal(n)
    )  # (T,)

    index = pd.bdate_range(config.start_date, periods=n, name="timestamp")
    return pd.DataFrame(
        {
            "open": np.exp(log_open),
            "high": np.exp(upper),
            "low": np.exp(lower),
            "close": np.exp(log_close),
            "volume": np.round(np.exp(log_volume)),
            "regime": regime,
        },
        index=index,
    )
