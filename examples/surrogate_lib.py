"""Data and model for the Darcy-flow surrogate example (a DenseED-like encoder-decoder).

The surrogate learns the map from a 2-D log-permeability field to the pressure that
solves the Darcy equation on the unit square, after Zhu & Zabaras (2018), "Bayesian deep
convolutional encoder-decoder networks for surrogate modeling and uncertainty
quantification", J. Comput. Phys. 366.

    -div(K grad p) = f   in (0, 1)^2,   f = 1,   p = 0 on the boundary,   K = exp(g)

where g is a stationary Gaussian random field with a squared-exponential covariance.
Everything is generated locally (no downloads); the model is plain Keras 3 and runs on any
backend (the project uses KERAS_BACKEND=torch).

    KERAS_BACKEND=torch python examples/surrogate_lib.py      # self-checks and timings
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

if TYPE_CHECKING:
    import keras

# keras is imported inside the model functions, not here: generating data then needs only
# NumPy/SciPy (no multi-second backend import, e.g. in worker processes), and the caller
# stays free to choose KERAS_BACKEND before keras is first imported.

__all__ = [
    "NormStats",
    "build_dense_ed",
    "darcy_operator",
    "gaussian_random_field",
    "generate_darcy",
    "normalize",
    "relative_l2_error",
    "solve_darcy",
]


# ---------------------------------------------------------------------------------------
# Data: Gaussian random fields and a finite-volume Darcy solver
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _grf_filter(grid: int, length_scale: float) -> np.ndarray:
    """Spectral amplitude of the squared-exponential field on the padded grid."""
    # The field is drawn on a grid twice as large and cropped, so the periodicity implied
    # by the FFT does not correlate opposite edges of the unit square.
    n = 2 * grid
    k = np.fft.fftfreq(n, d=1.0 / grid)  # cycles per unit length, cell size 1/grid
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    # Fourier transform of exp(-r^2 / (2 l^2)) is proportional to exp(-2 pi^2 l^2 |k|^2);
    # the amplitude applied to white noise is its square root.
    amp = np.exp(-(np.pi**2) * length_scale**2 * k2)
    # With numpy's FFT conventions Var(ifft2(fft2(w) * amp)) = mean(amp^2) for unit white
    # noise w, so this scaling gives unit pointwise variance in expectation.
    return amp / np.sqrt(np.mean(amp**2))


def gaussian_random_field(
    n_samples: int, grid: int = 32, length_scale: float = 0.1, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Draw zero-mean, unit-variance squared-exponential Gaussian random fields, shape (n, grid, grid)."""
    rng = np.random.default_rng() if rng is None else rng
    amp = _grf_filter(grid, float(length_scale))
    noise = rng.standard_normal((n_samples, 2 * grid, 2 * grid))
    # amp is even in k, so the inverse transform is real up to round-off.
    field = np.fft.ifft2(np.fft.fft2(noise) * amp).real
    return field[:, :grid, :grid]


@functools.lru_cache(maxsize=8)
def _operator_pattern(grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fixed sparsity of the 5-point operator: CSC indices, indptr and the COO->CSC order."""
    idx = np.arange(grid * grid).reshape(grid, grid)
    left, right = idx[:, :-1].ravel(), idx[:, 1:].ravel()
    up, down = idx[:-1, :].ravel(), idx[1:, :].ravel()
    rows = np.concatenate([idx.ravel(), left, right, up, down])
    cols = np.concatenate([idx.ravel(), right, left, down, up])
    # Every (row, col) pair is unique, so converting a matrix whose values are their COO
    # positions reveals the permutation once; per sample we then only reorder the values,
    # which is much cheaper than a COO->CSC conversion for every field.
    marker = sp.csc_matrix((np.arange(1, rows.size + 1, dtype=np.float64), (rows, cols)), shape=(grid * grid,) * 2)
    marker.sort_indices()
    order = marker.data.astype(np.int64) - 1
    return marker.indices.copy(), marker.indptr.copy(), order, idx


def darcy_operator(k: np.ndarray) -> sp.csc_matrix:
    """Assemble the finite-volume matrix A of -div(K grad p) with p = 0 on the boundary (A p = f)."""
    k = np.asarray(k, dtype=np.float64)
    grid = k.shape[0]
    if k.shape != (grid, grid):
        raise ValueError(f"expected a square 2-D field, got shape {k.shape}")
    h2 = (1.0 / grid) ** 2
    indices, indptr, order, _ = _operator_pattern(grid)
    # Harmonic means are the exact face conductance for a flux crossing two cells in series,
    # which keeps the scheme conservative when K jumps by orders of magnitude.
    tx = 2.0 * k[:, :-1] * k[:, 1:] / (k[:, :-1] + k[:, 1:])
    ty = 2.0 * k[:-1, :] * k[1:, :] / (k[:-1, :] + k[1:, :])
    diag = np.zeros_like(k)
    diag[:, :-1] += tx
    diag[:, 1:] += tx
    diag[:-1, :] += ty
    diag[1:, :] += ty
    # A boundary face is half a cell away from the Dirichlet value p = 0: conductance 2K.
    diag[:, 0] += 2.0 * k[:, 0]
    diag[:, -1] += 2.0 * k[:, -1]
    diag[0, :] += 2.0 * k[0, :]
    diag[-1, :] += 2.0 * k[-1, :]
    coo_values = np.concatenate([diag.ravel(), -tx.ravel(), -tx.ravel(), -ty.ravel(), -ty.ravel()]) / h2
    return sp.csc_matrix((coo_values[order], indices, indptr), shape=(grid * grid,) * 2)


def solve_darcy(k: np.ndarray, source: float = 1.0) -> np.ndarray:
    """Solve -div(K grad p) = source with p = 0 on the boundary; return the cell-centred p, shape (grid, grid)."""
    a = darcy_operator(k)
    rhs = np.full(a.shape[0], float(source))
    # The matrix is symmetric, so an ordering of A + A^T suits it better than COLAMD.
    lu = splu(a, permc_spec="MMD_AT_PLUS_A")
    return lu.solve(rhs).reshape(k.shape)


def generate_darcy(
    n_samples: int,
    grid: int = 32,
    length_scale: float = 0.1,
    seed: int = 0,
    progress: Callable[[int, int], object] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate (log K, p) pairs, each of shape (n_samples, grid, grid, 1) float32, deterministically for a seed."""
    rng = np.random.default_rng(seed)
    x = np.empty((n_samples, grid, grid, 1), dtype=np.float32)
    y = np.empty((n_samples, grid, grid, 1), dtype=np.float32)
    # Fields are drawn in chunks to amortise the FFTs; the generator emits the same stream
    # whatever the chunking, so the first m samples do not depend on n_samples.
    chunk = 256
    every = max(1, n_samples // 20)
    for start in range(0, n_samples, chunk):
        stop = min(start + chunk, n_samples)
        logk = gaussian_random_field(stop - start, grid, length_scale, rng)
        for j, g in enumerate(logk):
            i = start + j
            x[i, :, :, 0] = g
            y[i, :, :, 0] = solve_darcy(np.exp(g))
            if progress is not None and ((i + 1) % every == 0 or i + 1 == n_samples):
                progress(i + 1, n_samples)
    return x, y


class NormStats(NamedTuple):
    """Scalar mean and standard deviation of the training inputs and outputs."""

    x_mean: float
    x_std: float
    y_mean: float
    y_std: float

    def denormalize_y(self, y: np.ndarray) -> np.ndarray:
        """Map normalized outputs (e.g. predictions) back to pressure units."""
        return np.asarray(y) * self.y_std + self.y_mean


def normalize(x_train: np.ndarray, y_train: np.ndarray, *others: np.ndarray) -> tuple:
    """Standardize with training statistics: normalize(xtr, ytr, xte, yte, ...) -> (xtr', ytr', xte', yte', ..., NormStats)."""
    # Scalar statistics rather than per-pixel ones: the pressure is pinned to 0 near the
    # boundary, so per-pixel standard deviations there would be tiny and blow values up.
    if len(others) % 2:
        raise ValueError("others must come in (x, y) pairs")
    stats = NormStats(float(x_train.mean()), float(x_train.std()), float(y_train.mean()), float(y_train.std()))
    out = []
    for i, a in enumerate((x_train, y_train, *others)):
        mean, std = (stats.x_mean, stats.x_std) if i % 2 == 0 else (stats.y_mean, stats.y_std)
        out.append(((a - mean) / std).astype(np.float32))
    return (*out, stats)


def relative_l2_error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over samples of ||y_pred - y_true||_2 / ||y_true||_2."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    n = y_true.shape[0]
    diff = np.linalg.norm((y_pred - y_true).reshape(n, -1), axis=1)
    ref = np.linalg.norm(y_true.reshape(n, -1), axis=1)
    # Per-sample ratios, averaged, so a few high-pressure fields do not dominate the score.
    return float(np.mean(diff / np.maximum(ref, np.finfo(np.float64).tiny)))


# ---------------------------------------------------------------------------------------
# Model: a small DenseED
# ---------------------------------------------------------------------------------------


def _dense_block(x, n_layers: int, growth_rate: int, dropout: float, name: str):
    from keras import layers

    for i in range(1, n_layers + 1):
        p = f"{name}_layer{i}"
        h = layers.BatchNormalization(name=f"{p}_bn")(x)
        h = layers.ReLU(name=f"{p}_relu")(h)
        # No bias: the next consumer of this output starts with a BatchNorm that removes it.
        h = layers.Conv2D(growth_rate, 3, padding="same", use_bias=False, name=f"{p}_conv")(h)
        if dropout > 0:
            h = layers.Dropout(dropout, name=f"{p}_dropout")(h)
        x = layers.Concatenate(axis=-1, name=f"{p}_concat")([x, h])
    return x


def _transition(x, out_features: int, name: str, *, up: bool, final_features: int | None = None):
    from keras import layers

    # As in DenseED: a 1x1 bottleneck halves the channels before the resampling conv, which
    # keeps the cost of the 3x3 (transposed) convolution down.
    x = layers.BatchNormalization(name=f"{name}_bn1")(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = layers.Conv2D(out_features, 1, use_bias=False, name=f"{name}_conv1x1")(x)
    x = layers.BatchNormalization(name=f"{name}_bn2")(x)
    x = layers.ReLU(name=f"{name}_relu2")(x)
    features = out_features if final_features is None else final_features
    if up:
        return layers.Conv2DTranspose(features, 3, strides=2, padding="same", use_bias=False, name=f"{name}_convT")(x)
    return layers.Conv2D(features, 3, strides=2, padding="same", use_bias=False, name=f"{name}_conv_s2")(x)


def build_dense_ed(
    grid: int = 32,
    growth_rate: int = 12,
    blocks: tuple = (3, 4, 3),
    init_features: int = 32,
    dropout: float = 0.0,
) -> keras.Model:
    """Build a DenseED-like encoder-decoder mapping (grid, grid, 1) log K to (grid, grid, 1) pressure."""
    import keras
    from keras import layers

    if len(blocks) != 3:
        raise ValueError("blocks must give the layer counts of (encoder, bottleneck, decoder) dense blocks")
    if grid % 4:
        raise ValueError("grid must be divisible by 4 (two halvings)")

    inputs = keras.Input(shape=(grid, grid, 1), name="log_permeability")
    # The first conv works at half resolution, as in Zhu & Zabaras: a dense block at full
    # resolution would cost about four times as much for little gain on a 32x32 field.
    x = layers.Conv2D(init_features, 5, strides=2, padding="same", use_bias=False, name="init_conv")(inputs)
    features = init_features

    # Encoder: dense block at grid/2, then halve the resolution to grid/4.
    x = _dense_block(x, blocks[0], growth_rate, dropout, "enc_block")
    features = (features + blocks[0] * growth_rate) // 2
    x = _transition(x, features, "enc_down", up=False)

    # Bottleneck dense block at grid/4, then back up to grid/2.
    x = _dense_block(x, blocks[1], growth_rate, dropout, "mid_block")
    features = (features + blocks[1] * growth_rate) // 2
    x = _transition(x, features, "dec_up1", up=True)

    # Decoder dense block at grid/2, then up to full resolution with a narrow output so the
    # only full-resolution convolutions stay cheap.
    x = _dense_block(x, blocks[2], growth_rate, dropout, "dec_block")
    features = (features + blocks[2] * growth_rate) // 2
    x = _transition(x, features, "dec_up2", up=True, final_features=max(growth_rate, 8))

    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.ReLU(name="head_relu")(x)
    # Linear output: targets are standardized pressures, which can be negative.
    outputs = layers.Conv2D(1, 3, padding="same", name="pressure")(x)
    return keras.Model(inputs, outputs, name="dense_ed")


# ---------------------------------------------------------------------------------------
# Self-checks
# ---------------------------------------------------------------------------------------


def _main() -> None:
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")

    # Discrete operator: symmetric, and for K = 1 it is the 5-point Laplacian, whose
    # solution of -lap p = 1 on the unit square peaks near 0.0737 at the centre.
    grid = 32
    a = darcy_operator(np.ones((grid, grid)))
    p1 = solve_darcy(np.ones((grid, grid)))
    print(f"operator: symmetric={abs(a - a.T).max() == 0}, nnz={a.nnz}, "
          f"K=1 max p={p1.max():.5f} (continuum 0.07367)")

    t0 = time.perf_counter()
    x, y = generate_darcy(256, grid=grid, seed=0)
    t_gen = time.perf_counter() - t0
    print(f"generate_darcy(256): {t_gen:.2f} s ({1e3 * t_gen / 256:.2f} ms/sample); "
          f"x {x.shape} {x.dtype}, y {y.shape} {y.dtype}")

    x2, y2 = generate_darcy(16, grid=grid, seed=0)
    print(f"deterministic (prefix of seed 0 reproduced): {np.array_equal(x2, x[:16]) and np.array_equal(y2, y[:16])}")
    print(f"log K: mean={x.mean():+.3f}, std={x.std():.3f} (target 0, 1); "
          f"finite x={np.isfinite(x).all()}, finite y={np.isfinite(y).all()}")
    print(f"pressure: min={y.min():.3e} (positive inside: {(y > 0).all()}), max={y.max():.3e}")

    # Residual of the float64 solve, re-solved from the stored log K, for a few samples.
    res = []
    for i in range(0, 256, 32):
        k = np.exp(x[i, :, :, 0].astype(np.float64))
        p = solve_darcy(k)
        f = np.ones(grid * grid)
        res.append(np.linalg.norm(darcy_operator(k) @ p.ravel() - f) / np.linalg.norm(f))
        # The stored float32 pressure should match up to rounding.
        assert np.allclose(p, y[i, :, :, 0], rtol=1e-5, atol=1e-9)
    print(f"relative residual ||A p - f|| / ||f||: max={max(res):.2e}")

    import keras

    xtr, ytr, stats = normalize(x, y)
    model = build_dense_ed(grid=grid)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    print(f"model: {model.count_params():,} parameters, {len(model.layers)} layers, backend={keras.backend.backend()}")

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._t)

    timer = StepTimer()
    t0 = time.perf_counter()
    hist = model.fit(xtr, ytr, batch_size=32, epochs=2, verbose=0, callbacks=[timer])
    t_fit = time.perf_counter() - t0
    steady = timer.times[2:]  # the first steps include one-off tracing and allocation
    print(f"fit 2 epochs x {len(timer.times) // 2} steps: {t_fit:.2f} s; step time median "
          f"{1e3 * np.median(steady):.1f} ms, first {1e3 * timer.times[0]:.1f} ms; "
          f"loss {hist.history['loss'][0]:.4f} -> {hist.history['loss'][-1]:.4f}")
    pred = stats.denormalize_y(model.predict(xtr[:64], verbose=0))
    print(f"relative L2 error on 64 training samples after 2 epochs: {relative_l2_error(y[:64], pred):.3f}")


if __name__ == "__main__":
    _main()
