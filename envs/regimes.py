"""Hindsight regime labels from a Markov-switching model, fitted on the train split (``label_source="hmm"``).

Hindsight labels (the argmax of each strategy's PnL over the next bars) are noisy: over a few dozen bars luck
decides between strategies whose expected PnLs differ little. A regime model pools the evidence of a whole
regime instead. This module fits a Markov-switching AR(1) model (Hamilton 1989) to the train split's bars:
each hidden state k has its own return dynamics and volume level,

    ret_t | state k  ~  N(a_k + phi_k * ret_{t-1}, sigma_k^2)        volume_z_t | state k  ~  N(m_k, s_k^2)

with a first-order Markov chain between states, by expectation-maximisation (Baum-Welch). Each bar's state is
the most probable one under the smoothed posterior (forward-backward, so it uses later bars too: a label, never
an observation). That is the posterior argmax (each bar's own most probable state), not the Viterbi path (the
most probable sequence): the labels have always been defined so. Each decision is labelled with the strategy
that earned the most on average, on the train split, in its state. The inputs are two of the model's own
features (``ret`` and ``volume_z``), so the model works on any OHLCV data; only the number of states is a choice.

The fit sees train bars only, and train labels come from a forward-backward pass over train bars only, so no
test bar informs a train label. Test decisions are labelled from a pass over the whole series (their labels
only feed evaluation's label accuracy).

One instrument, one model. A universe is refused (``envs/replay.py``, kept as it was): the state numbers of
separate fits do not correspond, so a fit per instrument would need a strategy table per instrument, and a
pooled fit would read the jump from one instrument's last bar to the next one's first as a transition.

Forward-backward at scale: a blocked scan over a chain that forgets its start
-----------------------------------------------------------------------------
The filter recursion alpha_t = normalise((alpha_{t-1} @ A) * e_t) is sequential. The loop that computed it
(``_forward_backward_loop``, kept as the reference: ``method="loop"``) takes a Python step per bar each way:
~150 ms per EM iteration on 20,000 bars, so ~15 s per iteration and ~7.5 min per 30-iteration fit on
2,000,000 bars (with some seven (T, K) float64 arrays alive, 2 GiB and more at K = 16).
``_forward_backward`` cuts the bars into B blocks of L (at least ``_BLOCK_BARS``, at most ``_MAX_BLOCKS``
blocks) and runs the recursion in all blocks at once: one Python step advances B bars with one
(K, K) @ (K, B) product. Block 0 starts from bar 0; every other block starts from a uniform guess. Then each
block whose start was wrong reruns from the end its predecessor reached, and stops as soon as its new values
agree with the stored ones to a relative 1e-12 in every state. That comes early because a filter forgets its
start: each step is a positive linear map followed by a normalisation, which never expands Hilbert's
projective metric and contracts it geometrically (Birkhoff), so once two runs agree to 1e-12 they stay within
~2e-12 of each other for good. On the default market and on 2,000,000 synthetic bars every block settles in
that one rerun, a few hundred bars in; pure noise fitted with 16 states takes up to three. A chain that has
not forgotten its start by the end of a block hands its new end on to another round, and past ``_MAX_ROUNDS``
(a chain that barely forgets, e.g. two look-alike states that never switch) ``_exact_starts`` computes every
block's start exactly, by the two-level associative scan below, so the result is right whatever the data.
The backward pass is the same recursion run backwards with A transposed, on b_t = normalise(e_t * beta_t):
beta needs no scale of its own, since sum_k alpha_t(k) beta_t(k) = 1 fixes it, and the posterior is
alpha_t * (A @ b_{t+1}) normalised. Posteriors agree with the loop's to ~3e-13 (tests pin 1e-9), and the
labels of the default market are the loop's, bit for bit.

Why this rather than the parallel associative scan (prefix products of the matrices A diag(e_t), in
probability space with per-column log scales, or in the log semiring): that scan is exact without relying on
forgetting, but each combine is a K x K matrix product, so its work is K times the recursion's (16x at the
default ``label_states=16``: ~8 GFLOP per direction per EM iteration on 2,000,000 bars, plus three (T, K, K)
element-wise passes), the log-depth form adds a factor log T, and the log-semiring form needs logsumexp over
(T, K, K) terms (4 GiB at 2,000,000 x 16 x 16 doubles). Here it is the fallback only (``_exact_starts``: one
K x K map per block, chained over the blocks). The blocked scan does the recursion's own O(T K^2) work in
numpy: no numba, no new dependency, and each value comes from the loop's own arithmetic.

Layout and memory: the fit keeps its (K, L, B) arrays state-major (sums over states run along the slowest
axis) and position-major (step p of every block is one slice), three of them in float64 (emissions, forward
values then posteriors, backward values: 256 MiB each at T = 2,000,000, K = 16) plus the (6, L, B) features;
every other pass (emissions, posteriors and transition counts, the M step) runs over chunks of a few thousand
cells. Measured by ``python -m trm_act.bench labels --rows 2000000`` on a 2-core AVX-512 Xeon, one thread:
the 2,000,000-bar fit (30 EM iterations, 16 states) in 31-32 s of CPU (40-42 s wall beside other jobs),
1.0 GiB peak RSS, 9-11x the loop's time extrapolated; 4-5x the loop on 20,000 bars.

The EM iteration count is unchanged (``EM_ITERATIONS``; at 2,000,000 bars all 30 run): fewer would change
the labels. Each bar's label state stays the posterior argmax (not the Viterbi path), and the label path has
no other per-bar Python loop: the k-means start (``_initial_states``) is chunked and column-wise, bit for bit
the full-array computation it replaced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .features import ewm_mean

EM_ITERATIONS = 30
"""Baum-Welch iterations at most: on the default market 30 agree with the true regimes as well as 50 do, at
half the time. The iteration count is unchanged by the blocked scan, so the labels are too; on 2,000,000
bars all 30 run (the per-bar gain stays above ``EM_TOLERANCE``)."""
EM_TOLERANCE = 1e-6
"""Stop when an iteration raises the log-likelihood per bar by less than this."""
INITIAL_STAY = 0.99
"""Initial probability of staying in a state (regimes last many bars); EM then learns the transitions."""
METHODS: tuple[str, ...] = ("scan", "loop")
"""Forward-backward implementations: "scan" (blocked, vectorised; the default) and "loop" (the sequential
reference, one Python step a bar: tests and ``bench labels --rows`` compare the two)."""
_MIN_SCALE = 1e-3  # floor of sigma_k and s_k, so that no state collapses onto a few identical bars
_BLOCK_BARS = 1024  # bars per block of the scan, at least: longer than the chain takes to forget its start
_MAX_BLOCKS = 1024  # blocks at most (longer blocks beyond), so one Python step stays a few (B, K) operations
_MERGE_RTOL = 1e-12  # a block's rerun stops where every component agrees with the stored value to this
_MERGE_ATOL = 1e-300  # below this, values count as zero (underflow differs between starts)
_CHECK_EVERY = 8  # steps between two checks of a rerun block against its stored values
_MAX_ROUNDS = 4  # rounds of reruns at most; then the exact two-level scan (``_exact_starts``)
_CHUNK_BARS = 1 << 12  # cells per chunk of the elementwise passes: (K, chunk) temporaries stay in L2 cache
_NO_CELLS = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class RegimeHMM:
    """Parameters of the fitted model; every array is indexed by state."""

    intercept: np.ndarray
    """(K,) a_k."""
    ar: np.ndarray
    """(K,) phi_k, the lag-1 autoregression of ret."""
    sigma: np.ndarray
    """(K,) residual standard deviation of ret."""
    volume_mean: np.ndarray
    """(K,) m_k."""
    volume_std: np.ndarray
    """(K,) s_k."""
    transition: np.ndarray
    """(K, K) transition[i, j] = P(state j at t+1 | state i at t)."""
    initial: np.ndarray
    """(K,) distribution of the first bar's state."""
    log_likelihood_per_bar: float
    """Mean log-likelihood of the fitted bars (a fit diagnostic)."""
    iterations: int = 0
    """EM iterations run (at most ``EM_ITERATIONS``; a fit diagnostic)."""


def _lagged(ret: np.ndarray) -> np.ndarray:
    """(T,) ret[t-1], 0 at bar 0 (bar 0 has no lag)."""
    return np.concatenate(([0.0], ret[:-1]))


def _features(ret: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """(6, T) the per-bar quantities the model's sums need: 1, x = ret[t-1], y = ret, x^2, x y, volume."""
    x = _lagged(ret)
    return np.stack((np.ones_like(ret), x, ret, np.square(x), ret * x, volume))


def _log_emission_columns(
    features: np.ndarray,
    intercept: np.ndarray,
    ar: np.ndarray,
    sigma: np.ndarray,
    volume_mean: np.ndarray,
    volume_std: np.ndarray,
) -> np.ndarray:
    """(K, N) log density of each bar's (ret, volume_z) in each state, up to a constant; ``features`` (6, N).

    u = (ret - a_k - phi_k ret[t-1]) / sigma_k and w = (volume - m_k) / s_k are linear forms of the features:
    one (2K, 6) @ (6, N) product gives both (scaled by sqrt(1/2), so that their squares sum to the exponent)
    instead of a dozen (N, K) passes. No square is expanded, so nothing cancels.
    """
    k, h = intercept.shape[0], math.sqrt(0.5)
    forms = np.zeros((2 * k, 6))  # (2K, 6) over (1, x, y, x^2, x y, volume)
    forms[:k, 0], forms[:k, 1], forms[:k, 2] = -h * intercept / sigma, -h * ar / sigma, h / sigma
    forms[k:, 0], forms[k:, 5] = -h * volume_mean / volume_std, h / volume_std
    z = np.square(forms @ features)  # (2K, N)
    out = z[:k] + z[k:]  # (K, N)
    return np.subtract((-np.log(sigma) - np.log(volume_std))[:, None], out, out=out)


def _log_emission(ret: np.ndarray, volume: np.ndarray, **params: np.ndarray) -> np.ndarray:
    """(T, K) log density of bar t's (ret, volume_z) in each state, up to a constant (bar 0 has no lag)."""
    return _log_emission_columns(_features(ret, volume), **params).T


def _parameters(sums: np.ndarray, squares: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Emission parameters from the posterior-weighted sums (K, 6) over the features, by weighted least
    squares per state; sigma and s from the weighted squared residuals (2, K), absent in the first pass."""
    n, sx, sy, sxx, sxy, sv = sums.T  # (K,) each
    det = n * sxx - sx**2  # (K,) > 0 unless a state sees one lagged value only
    ar = np.where(det > 1e-12, (n * sxy - sx * sy) / np.maximum(det, 1e-12), 0.0)  # (K,)
    params = {"intercept": (sy - ar * sx) / n, "ar": ar, "volume_mean": sv / n}
    if squares is not None:
        params["sigma"] = np.sqrt(squares[0] / n) + _MIN_SCALE
        params["volume_std"] = np.sqrt(squares[1] / n) + _MIN_SCALE
    return params


def _residual_forms(intercept: np.ndarray, ar: np.ndarray, volume_mean: np.ndarray) -> np.ndarray:
    """(2K, 6) ret - a_k - phi_k x and volume - m_k as linear forms of the features."""
    k = intercept.shape[0]
    forms = np.zeros((2 * k, 6))
    forms[:k, 0], forms[:k, 1], forms[:k, 2] = -intercept, -ar, 1.0
    forms[k:, 0], forms[k:, 5] = -volume_mean, 1.0
    return forms


def _forward_backward_loop(
    log_emission: np.ndarray, transition: np.ndarray, initial: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Scaled forward-backward, one Python step a bar: posterior (T, K), expected transition counts (K, K),
    log-likelihood. The reference that ``_forward_backward`` reproduces (method "loop")."""
    n, k = log_emission.shape
    shift = log_emission.max(axis=1, keepdims=True)  # (T, 1) keeps exp() in range
    emission = np.exp(log_emission - shift)  # (T, K)
    alpha = np.empty((n, k))  # (T, K) filtered state probabilities
    scale = np.empty(n)  # (T,) P(bar t | bars < t), up to exp(shift)
    a = initial * emission[0]
    scale[0] = a.sum()
    alpha[0] = a / scale[0]
    for t in range(1, n):  # sequential by nature; K is small, so each step is a few microseconds
        a = (alpha[t - 1] @ transition) * emission[t]
        scale[t] = a.sum()
        alpha[t] = a / scale[t]
    beta = np.empty((n, k))  # (T, K)
    beta[-1] = 1.0
    for t in range(n - 2, -1, -1):
        beta[t] = transition @ (emission[t + 1] * beta[t + 1]) / scale[t + 1]
    posterior = alpha * beta  # (T, K), rows sum to 1
    weighted_next = emission[1:] * beta[1:] / scale[1:, None]  # (T-1, K)
    expected_transitions = transition * (alpha[:-1].T @ weighted_next)  # (K, K)
    return posterior, expected_transitions, float(np.log(scale).sum() + shift.sum())


def _agree(new: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """(N,) columns of ``new`` within _MERGE_RTOL of ``stored`` (both (K, N), nonnegative) in every state."""
    return np.all(np.abs(new - stored) <= _MERGE_RTOL * stored + _MERGE_ATOL, axis=0)


def _run_blocks(
    v: np.ndarray,
    emission: np.ndarray,
    matrix: np.ndarray,
    out: np.ndarray,
    scale: np.ndarray | None,
    blocks: slice | np.ndarray,
    check: bool = False,
    hold: int = 0,
) -> tuple[slice | np.ndarray, np.ndarray]:
    """Steps 0..L-1 of v_p = (matrix @ v_{p-1}) * emission_p / sum for ``blocks`` (a slice, or indices) from
    their starts v (K, N), into ``out`` and ``scale``. With ``check``, a block stops where it meets its stored
    values; returns the blocks that ran to the end and their last values. Block 0 (when in ``blocks``) is held
    at its start for the first ``hold`` steps."""
    first, step = v[:, 0].copy(), np.empty_like(v)
    for p in range(emission.shape[1]):
        np.matmul(matrix, v, out=step)  # v stays contiguous: BLAS takes no reversed (backward) view
        step *= emission[:, p, blocks]
        total = step.sum(axis=0)  # (N,)
        np.divide(step, total, out=v)
        if p < hold:
            v[:, 0] = first
        # (N,) blocks that continue as stored: stop them (checked every few steps: a check costs a step)
        met = _agree(v, out[:, p, blocks]) if check and p % _CHECK_EVERY == _CHECK_EVERY - 1 else None
        out[:, p, blocks] = v
        if scale is not None:
            scale[p, blocks] = total
        if met is not None and met.any():
            blocks, v = blocks[~met], v[:, ~met]
            step = np.empty_like(v)
            if not v.shape[1]:
                break
    return blocks, v


def _exact_starts(end: np.ndarray, emission: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(K, M+1) the exact starts of blocks 1..M+1 given block 0's last value ``end`` (K,) and the (K, L, M)
    emissions of blocks 1..M: the two-level associative scan. Each block's map from start to end is linear
    up to normalisation; its K x K matrix comes from running the K unit vectors through the block at once
    (columns normalised, their log scales kept), then one pass over the blocks chains the maps."""
    k, _, m = emission.shape
    columns = np.repeat(np.eye(k)[:, :, None], m, axis=2)  # (K, K, M) column j: the run started from state j
    log_scale = np.zeros((k, m))  # (K, M) the log of what each column's normalisation divided out
    with np.errstate(divide="ignore", invalid="ignore"):  # a column that underflows to 0 carries no weight
        for p in range(emission.shape[1]):
            columns = (matrix @ columns.reshape(k, -1)).reshape(k, k, m) * emission[:, p, None, :]
            total = columns.sum(axis=0)  # (K, M)
            columns /= np.where(total > 0, total, 1.0)
            log_scale += np.log(total)
        starts = np.empty((k, m + 1))
        starts[:, 0] = end
        for b in range(m):
            log_weight = np.log(starts[:, b]) + log_scale[:, b]  # (K,)
            v = columns[:, :, b] @ np.exp(log_weight - log_weight.max())
            starts[:, b + 1] = v / v.sum()
    return starts


def _blocked_scan(
    first: np.ndarray,
    emission: np.ndarray,
    matrix: np.ndarray,
    out: np.ndarray,
    scale: np.ndarray | None,
    hold: int = 0,
) -> int:
    """Run v_p = (matrix @ v_{p-1}) * emission_p / sum in B blocks at once; returns the rounds it took.

    ``emission`` and ``out`` are (K, L, B): step p of every block is the (K, B) slice [:, p]; ``scale`` is
    (L, B) for the sums, or None. Block 0 starts from ``first`` (K,) and is held there for its first
    ``hold`` steps; block b starts from block b-1's last value. Round 1 starts blocks 1.. from a uniform
    guess; each later round reruns the blocks whose start moved, each until it meets its stored values
    (module docstring). Past ``_MAX_ROUNDS`` (a chain that forgets its start slower than a block), exact
    starts from ``_exact_starts``.
    """
    k, _, n_blocks = emission.shape
    start = np.full((k, n_blocks), 1.0 / k)  # (K, B) the start each block ran from
    start[:, 0] = first
    _, end = _run_blocks(start.copy(), emission, matrix, out, scale, slice(None), hold=hold)  # (K, B)
    rounds, moved = 1, np.arange(n_blocks)  # blocks whose end may differ from their successor's start
    while True:
        following = moved[moved + 1 < n_blocks] + 1  # (N,)
        rerun = following[~_agree(end[:, following - 1], start[:, following])]  # (N',) their start is stale
        if not rerun.size:
            return rounds
        rounds += 1
        if rounds > _MAX_ROUNDS:
            start[:, 1:] = _exact_starts(end[:, 0], emission[:, :, 1:-1], matrix)
            _run_blocks(start[:, 1:].copy(), emission, matrix, out, scale, slice(1, None))
            return rounds
        start[:, rerun] = end[:, rerun - 1]
        moved, v = _run_blocks(start[:, rerun], emission, matrix, out, scale, rerun, check=True)
        end[:, moved] = v  # blocks that never met their stored values end elsewhere now


class _Smoother:
    """Forward-backward over T bars laid out for the blocked scan, and the M step on the same layout.

    The bars are cut into B blocks of L; ``lead`` = B*L - T empty cells come first, so block 0 holds them,
    then bar 0, and every block ends on a bar. Per-bar arrays are (..., L, B) and per-bar-and-state arrays
    (K, L, B): cell (p, b) holds bar b*L + p - lead, so step p of every block is one (K, B) slice, and sums
    over states run along the slowest axis (fast in numpy). Three (K, L, B) float64 buffers (emissions,
    forward values then posteriors, backward values) and the (6, L, B) features; every other pass runs over
    chunks of positions, so its temporaries stay near ``_CHUNK_BARS`` x K whatever T is.
    """

    def __init__(self, ret: np.ndarray, volume: np.ndarray, k: int) -> None:
        n = ret.shape[0]
        self.n, self.k = n, k
        self.length = max(min(_BLOCK_BARS, n), math.ceil(n / _MAX_BLOCKS))  # L
        self.blocks = math.ceil(n / self.length)  # B
        self.lead = self.blocks * self.length - n  # empty cells before bar 0, all in block 0 (lead < L)
        self.step = max(1, _CHUNK_BARS // self.blocks)  # positions per chunk
        self.features = self.put(_features(ret, volume).T)  # (6, L, B); empty cells 0
        self.feature_total = self.features.sum(axis=(1, 2))  # (6,)
        shape = (k, self.length, self.blocks)
        self.emission = np.empty(shape)  # every cell is written before it is read
        self.forward = np.empty(shape)
        self.backward = np.empty(shape)
        self.scale = np.ones(shape[1:])  # (L, B) forward normalisers; empty cells 1 (log 0)
        self.shift = np.zeros(shape[1:])  # (L, B) max_k log e; empty cells 0
        self.sums: np.ndarray | None = None  # (K, 6) the M step's weighted sums, when smooth() made them
        self.rounds = (0, 0)  # rounds of the last forward and backward scans (a diagnostic)

    def put(self, bars: np.ndarray) -> np.ndarray:
        """(T,) -> (L, B), or (T, K) -> (K, L, B); empty cells 0."""
        cells = np.zeros((self.blocks * self.length, *bars.shape[1:]))
        cells[self.lead :] = bars
        grid = cells.reshape(self.blocks, self.length, *bars.shape[1:]).swapaxes(0, 1)  # (L, B, ...)
        return np.ascontiguousarray(np.moveaxis(grid, 2, 0) if bars.ndim == 2 else grid)

    def take(self, cells: np.ndarray) -> np.ndarray:
        """(L, B) -> (T,), or (K, L, B) -> (T, K), in bar order."""
        grid = np.moveaxis(cells, 0, 2) if cells.ndim == 3 else cells  # (L, B, ...)
        return grid.swapaxes(0, 1).reshape(self.blocks * self.length, *grid.shape[2:])[self.lead :]

    def _chunks(self, stop: int | None = None):
        """Slices of positions 0..stop-1 (default L), a few thousand cells each."""
        stop = self.length if stop is None else stop
        for lo in range(0, stop, self.step):
            yield slice(lo, min(lo + self.step, stop))

    @staticmethod
    def _flat(buffer: np.ndarray, rows: slice) -> np.ndarray:
        """(K, c) view of the cells of positions ``rows``."""
        return buffer[:, rows].reshape(buffer.shape[0], -1)

    def _empty(self, rows: slice) -> np.ndarray:
        """Indices, among a chunk's cells, of its empty ones (block 0 before bar 0)."""
        return (np.arange(rows.start, min(rows.stop, self.lead)) - rows.start) * self.blocks

    def set_emission(self, params: dict[str, np.ndarray]) -> None:
        """Emissions exp(log e - max_k log e) of every bar; the max goes to ``shift``."""
        for rows in self._chunks():
            self._store_log_emission(rows, _log_emission_columns(self._flat(self.features, rows), **params))

    def set_log_emission(self, log_emission: np.ndarray) -> None:
        """Emissions from a (T, K) log-emission array in bar order (``_forward_backward``)."""
        cells = self.put(log_emission)  # (K, L, B)
        for rows in self._chunks():
            self._store_log_emission(rows, self._flat(cells, rows))

    def _store_log_emission(self, rows: slice, log_e: np.ndarray) -> None:
        shift = log_e.max(axis=0)  # (c,)
        self.shift[rows] = shift.reshape(-1, self.blocks)
        np.exp(log_e - shift, out=self._flat(self.emission, rows))
        self.shift[: self.lead, 0] = 0.0

    def set_partition(self, states: np.ndarray) -> None:
        """Posteriors from a partition (T,) int: 0.9 + 0.1 / K on each bar's state, 0.1 / K elsewhere."""
        self.forward.fill(0.1 / self.k)
        cells = self.put(states).astype(np.int64)[None]  # (1, L, B)
        np.put_along_axis(self.forward, cells, 0.9 + 0.1 / self.k, axis=0)
        self.sums = None

    def set_posterior(self, posterior: np.ndarray) -> None:
        """Posteriors (T, K) in bar order (method "loop")."""
        self.forward[:] = self.put(posterior)
        self.sums = None

    def smooth(
        self, transition: np.ndarray, initial: np.ndarray, counts: bool = True
    ) -> tuple[float, np.ndarray | None]:
        """Posteriors into ``forward``; returns the log-likelihood and the expected transition counts (K, K).

        With ``counts`` it also adds up the M step's weighted sums (``sums``) while each chunk is at hand."""
        lead, k = self.lead, self.k
        first = initial * self.emission[:, lead, 0]  # bar 0
        first_scale = first.sum()
        first = first / first_scale
        self.rounds = (
            _blocked_scan(first, self.emission, transition.T, self.forward, self.scale, hold=lead + 1),
            # b_t = normalise(e_t * beta_t), backwards with A, from the last bar: b_{T-1} =
            # normalise((A @ 1/K) * e_{T-1}) = normalise(e_{T-1}), as beta_{T-1} = 1 and A's rows sum to 1.
            _blocked_scan(
                np.full(k, 1.0 / k),
                self.emission[:, ::-1, ::-1],
                transition,
                self.backward[:, ::-1, ::-1],
                None,
            ),
        )
        self.scale[:lead, 0] = 1.0
        self.scale[lead, 0] = first_scale
        log_likelihood = float(np.log(self.scale).sum() + self.shift.sum())
        expected = np.zeros((k, k))  # (K, K)
        self.sums = np.zeros((k, 6)) if counts else None
        # Bar t pairs with bar t+1: the next position in the same block, and from a block's last position the
        # next block's first. The last block's last cell, bar T-1, has no pair: its posterior is its alpha.
        pairs = [
            (
                self._flat(self.forward, rows),
                self._flat(self.backward, slice(rows.start + 1, rows.stop + 1)),
                self._flat(self.features, rows),
                self._empty(rows),
            )
            for rows in self._chunks(self.length - 1)
        ]
        last = slice(0, self.blocks - 1)
        pairs.append(
            (self.forward[:, -1, last], self.backward[:, 0, 1:], self.features[:, -1, last], _NO_CELLS)
        )
        for alpha, b_next, features, empty in pairs:
            # gamma_t = alpha_t * beta_t with beta_t proportional to A @ b_{t+1}; its normaliser z_t also
            # divides xi_{t+1}(i, j) = alpha_t(i) A_ij b_{t+1}(j) / z_t.
            joint = alpha * (transition @ b_next)  # (K, c)
            z = joint.sum(axis=0)  # (c,)
            if counts:
                weight = alpha / z  # (K, c)
                weight[:, empty] = 0.0  # empty cells pair with nothing
                expected += weight @ b_next.T  # (K, K)
            np.divide(joint, z, out=alpha)
            if self.sums is not None:
                self.sums += alpha @ features.T  # empty cells have all-zero features: they add nothing
        if self.sums is not None:
            self.sums += np.outer(self.forward[:, -1, -1], self.features[:, -1, -1])  # bar T-1
            self.sums += 1e-12 * self.feature_total  # the weights are posterior + 1e-12 (no state left empty)
        return log_likelihood, (transition * expected if counts else None)

    def posterior(self) -> np.ndarray:
        """(T, K) posteriors in bar order (after ``smooth``)."""
        return self.take(self.forward)

    def states(self) -> np.ndarray:
        """(T,) int64 each bar's most probable state (after ``smooth``)."""
        # Argmax per chunk: a whole-array argmax over axis 0 would copy the (K, L, B) buffer.
        cells = np.empty((self.length, self.blocks), dtype=np.int64)  # (L, B)
        for rows in self._chunks():
            cells[rows] = self._flat(self.forward, rows).argmax(axis=0).reshape(-1, self.blocks)
        return self.take(cells)

    def maximise(self) -> dict[str, np.ndarray]:
        """Emission parameters maximising the expected log-likelihood under the posteriors in ``forward``:
        weighted least squares per state, from the weighted sums (made by ``smooth``, else a pass here), then
        a pass for the weighted squared residuals. The weights are posterior + 1e-12; empty cells have
        all-zero features, hence zero residuals: they add nothing."""
        if self.sums is None:
            self.sums = 1e-12 * np.broadcast_to(self.feature_total, (self.k, 6))  # weights: posterior + 1e-12
            for rows in self._chunks():
                self.sums += self._flat(self.forward, rows) @ self._flat(self.features, rows).T
        params = _parameters(self.sums)
        forms = _residual_forms(**params)  # (2K, 6)
        squares = np.zeros((2, self.k))  # (2, K) weighted squared residuals of ret and of volume
        for rows in self._chunks():
            w = self._flat(self.forward, rows) + 1e-12  # (K, c)
            residual = np.square(forms @ self._flat(self.features, rows))  # (2K, c); 0 in empty cells
            squares[0] += np.einsum("kc,kc->k", w, residual[: self.k])
            squares[1] += np.einsum("kc,kc->k", w, residual[self.k :])
        return _parameters(self.sums, squares)


def _forward_backward(
    log_emission: np.ndarray, transition: np.ndarray, initial: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Blocked forward-backward: posterior (T, K), expected transition counts (K, K), log-likelihood; what
    ``_forward_backward_loop`` returns, to rounding (module docstring)."""
    n, k = log_emission.shape
    smoother = _Smoother(np.zeros(n), np.zeros(n), k)
    smoother.set_log_emission(log_emission)
    log_likelihood, counts = smoother.smooth(transition, initial)
    assert counts is not None
    return smoother.posterior(), counts, log_likelihood


def _initial_states(ret: np.ndarray, volume: np.ndarray, n_states: int, seed: int) -> np.ndarray:
    """(T,) int a starting partition: k-means over slow summaries (volatility, volume, autocorrelation) of
    each bar. Chunked and column-wise, but bit for bit the full-array computation it replaced."""
    lagged = _lagged(ret)
    summaries = np.column_stack(
        (
            np.log(ewm_mean(np.square(ret), 10.0) + 1e-6),
            ewm_mean(volume, 10.0),
            ewm_mean(ret * lagged, 20.0) / (ewm_mean(np.square(ret), 20.0) + 1e-6),
        )
    )  # (T, 3)
    summaries = (summaries - summaries.mean(axis=0)) / (summaries.std(axis=0) + 1e-12)
    rng = np.random.default_rng(seed)
    centres = summaries[rng.choice(summaries.shape[0], n_states, replace=False)]  # (K, 3)
    columns = [np.ascontiguousarray(summaries[:, j]) for j in range(3)]  # (T,) each
    nearest = np.zeros(summaries.shape[0], dtype=np.int64)  # (T,)
    for iteration in range(20):
        previous = nearest.copy()
        for lo in range(0, nearest.shape[0], 4 * _CHUNK_BARS):
            hi = lo + 4 * _CHUNK_BARS
            # Squared distances (K, c), summed in the order sum(axis=-1) adds them; state-major, so that every
            # operation runs along the bars. argmin takes the first of equals, as before.
            distance = np.square(columns[0][None, lo:hi] - centres[:, :1])
            distance += np.square(columns[1][None, lo:hi] - centres[:, 1:2])
            distance += np.square(columns[2][None, lo:hi] - centres[:, 2:])
            nearest[lo:hi] = distance.argmin(axis=0)
        if iteration and np.array_equal(nearest, previous):
            break  # a fixed point: the centres, hence the assignment, would not change again
        # Each centre is its members' mean: bincount adds them in row order, as an axis-0 mean does.
        members = np.bincount(nearest, minlength=n_states)  # (K,)
        for j in range(3):
            total = np.bincount(nearest, weights=columns[j], minlength=n_states)  # (K,)
            centres[:, j] = np.where(members > 0, total / np.maximum(members, 1), centres[:, j])
    return nearest


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS} (forward-backward implementation)")


def fit_regime_hmm(
    ret: np.ndarray, volume: np.ndarray, n_states: int, seed: int = 0, *, method: str = "scan"
) -> RegimeHMM:
    """Fit the Markov-switching AR(1) model to the bars (ret, volume_z), each (T,) float, by Baum-Welch.

    ``method`` picks the forward-backward implementation (``METHODS``): "scan" (default) or the sequential
    reference "loop" (slow: one Python step a bar each way; kept for tests and ``bench labels --rows``).
    """
    _check_method(method)
    ret, volume = np.asarray(ret, dtype=np.float64), np.asarray(volume, dtype=np.float64)
    if ret.shape != volume.shape or ret.ndim != 1 or ret.shape[0] < 10 * n_states:
        raise ValueError(
            f"fit_regime_hmm needs two (T,) series with T >= 10 x n_states = {10 * n_states} bars; "
            f"got ret {ret.shape} and volume {volume.shape}"
        )
    partition = _initial_states(ret, volume, n_states, seed)  # before the buffers: a lower peak
    smoother = _Smoother(ret, volume, n_states)
    smoother.set_partition(partition)
    del partition
    transition = np.full((n_states, n_states), (1.0 - INITIAL_STAY) / (n_states - 1))
    np.fill_diagonal(transition, INITIAL_STAY)
    initial = np.full(n_states, 1.0 / n_states)
    previous, iterations = -np.inf, 0
    while iterations < EM_ITERATIONS:
        iterations += 1
        params = smoother.maximise()
        if method == "scan":
            smoother.set_emission(params)
            log_likelihood, counts = smoother.smooth(transition, initial)
            initial = smoother.forward[:, smoother.lead, 0].copy()  # bar 0's posterior
        else:
            posterior, counts, log_likelihood = _forward_backward_loop(
                _log_emission(ret, volume, **params), transition, initial
            )
            smoother.set_posterior(posterior)
            initial = posterior[0]
        assert counts is not None
        transition = counts / counts.sum(axis=1, keepdims=True)
        per_bar = log_likelihood / ret.shape[0]
        if per_bar - previous < EM_TOLERANCE:
            break
        previous = per_bar
    return RegimeHMM(**smoother.maximise(), transition=transition, initial=initial,
                     log_likelihood_per_bar=per_bar, iterations=iterations)  # fmt: skip


def most_probable_states(
    hmm: RegimeHMM, ret: np.ndarray, volume: np.ndarray, *, method: str = "scan"
) -> np.ndarray:
    """(T,) int64 the state of highest smoothed posterior probability at each bar (the posterior argmax, not
    the Viterbi path); ``method`` as in ``fit_regime_hmm``."""
    _check_method(method)
    ret, volume = np.asarray(ret, np.float64), np.asarray(volume, np.float64)
    params = {
        "intercept": hmm.intercept,
        "ar": hmm.ar,
        "sigma": hmm.sigma,
        "volume_mean": hmm.volume_mean,
        "volume_std": hmm.volume_std,
    }
    if method == "loop":
        log_emission = _log_emission(ret, volume, **params)
        posterior, _, _ = _forward_backward_loop(log_emission, hmm.transition, hmm.initial)
        return posterior.argmax(axis=1).astype(np.int64)
    smoother = _Smoother(ret, volume, hmm.transition.shape[0])
    smoother.set_emission(params)
    smoother.smooth(hmm.transition, hmm.initial, counts=False)
    return smoother.states()
