"""The log-space objective of every nonlinear form: models of log L_pred, and the Huber objective of the
log residuals over them.  Both are batched over rows of theta, so that many starts or bootstrap
resamples are evaluated together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

_CHUNK_ELEMENTS = 32_768  # (rows x runs) elements evaluated at once: 256 kB temporaries fit in cache

# --------------------------------------------------------------------------------------------------
# Log-space models: log_predict(theta[starts, params]) -> (log L_pred[starts, runs], vjp)
# where vjp(cotangent[starts, runs]) -> gradient[starts, params].
# --------------------------------------------------------------------------------------------------

VectorJacobianProduct = Callable[[np.ndarray], np.ndarray]


class _LogModel(Protocol):
    n_params: int

    def log_predict(self, theta: np.ndarray) -> tuple[np.ndarray, VectorJacobianProduct]: ...

    def astype(self, dtype: type) -> _LogModel: ...


@dataclass(frozen=True)
class _SumOfPowerLaws:
    """log(E + sum_i A_i x_i^-alpha_i) = LSE(e, a_i - alpha_i log x_i); theta = (e, a_1, alpha_1, ...).

    The log-sum-exp parametrisation keeps E, A_i positive without bounds (Hoffmann et al.)."""

    log_features: tuple[np.ndarray, ...]

    @property
    def n_params(self) -> int:
        return 1 + 2 * len(self.log_features)

    def astype(self, dtype: type) -> _SumOfPowerLaws:
        return _SumOfPowerLaws(tuple(x.astype(dtype) for x in self.log_features))

    def log_predict(self, theta: np.ndarray) -> tuple[np.ndarray, VectorJacobianProduct]:
        log_e = theta[:, 0]
        coefficients = [theta[:, 1 + 2 * i] for i in range(len(self.log_features))]
        exponents = [theta[:, 2 + 2 * i] for i in range(len(self.log_features))]
        shift = self._largest_log_term(log_e, coefficients, exponents)
        weight_e = np.exp(log_e - shift)[:, None]
        weights = []
        for coefficient, exponent, x in zip(coefficients, exponents, self.log_features, strict=True):
            weight = np.multiply.outer(-exponent, x)
            weight += (coefficient - shift)[:, None]
            weights.append(np.exp(weight, out=weight))
        total = weight_e + sum(weights)
        log_pred = np.log(total)
        log_pred += shift[:, None]

        def vjp(cotangent: np.ndarray) -> np.ndarray:
            # Overwrites the weight buffers to save allocations: call it at most once.
            scaled = cotangent / total
            gradient = np.empty((theta.shape[0], self.n_params))
            gradient[:, 0] = weight_e[:, 0] * scaled.sum(axis=1)
            for i, (weight, x) in enumerate(zip(weights, self.log_features, strict=True)):
                term_cotangent = np.multiply(scaled, weight, out=weight)
                gradient[:, 1 + 2 * i] = term_cotangent.sum(axis=1)
                # einsum, not BLAS: threaded BLAS slows these thin products on a busy machine.
                gradient[:, 2 + 2 * i] = -np.einsum("sp,p->s", term_cotangent, x)
            return gradient

        return log_pred, vjp

    def _largest_log_term(
        self, log_e: np.ndarray, coefficients: list[np.ndarray], exponents: list[np.ndarray]
    ) -> np.ndarray:
        """Per-row maximum over runs of every log term, in closed form (a term is monotone in log x);
        subtracting it makes every exp() <= 1 without an extra pass over the runs."""
        shift = log_e
        for coefficient, exponent, x in zip(coefficients, exponents, self.log_features, strict=True):
            log_x_at_max = np.where(exponent >= 0, x.min(), x.max())
            shift = np.maximum(shift, coefficient - exponent * log_x_at_max)
        return shift


@dataclass(frozen=True)
class _KaplanModel:
    """log L = alpha_D * LSE((alpha_N / alpha_D)(n_c - log N), d_c - log D);
    theta = (n_c = log N_c, d_c = log D_c, alpha_N, alpha_D)."""

    log_n: np.ndarray
    log_d: np.ndarray
    n_params: ClassVar[int] = 4

    def astype(self, dtype: type) -> _KaplanModel:
        return _KaplanModel(self.log_n.astype(dtype), self.log_d.astype(dtype))

    def log_predict(self, theta: np.ndarray) -> tuple[np.ndarray, VectorJacobianProduct]:
        log_n_c, log_d_c, alpha_n, alpha_d = (theta[:, j : j + 1] for j in range(4))
        model_term = alpha_n / alpha_d * (log_n_c - self.log_n)
        data_term = log_d_c - self.log_d
        lse = np.logaddexp(model_term, data_term)
        model_share = np.exp(model_term - lse)

        def vjp(cotangent: np.ndarray) -> np.ndarray:
            model_cotangent = cotangent * model_share
            return np.column_stack(
                [
                    alpha_n[:, 0] * model_cotangent.sum(axis=1),
                    alpha_d[:, 0] * (cotangent - model_cotangent).sum(axis=1),
                    np.einsum("sp,sp->s", model_cotangent, log_n_c - self.log_n),
                    np.einsum("sp,sp->s", cotangent, lse - model_share * model_term),
                ]
            )

        return alpha_d * lse, vjp


@dataclass(frozen=True)
class _AffineReparametrised:
    """A model of fewer free parameters: theta = offset + free @ basis.  Holding a parameter fixed drops
    its row; tying two exponents gives them one row with ones in both columns."""

    model: _LogModel
    basis: np.ndarray  # (free params, model params)
    offset: np.ndarray  # (model params,)

    @property
    def n_params(self) -> int:
        return len(self.basis)

    def astype(self, dtype: type) -> _AffineReparametrised:
        return _AffineReparametrised(self.model.astype(dtype), self.basis, self.offset)

    def full(self, free: np.ndarray) -> np.ndarray:
        return (free @ self.basis + self.offset).astype(free.dtype, copy=False)

    def log_predict(self, theta: np.ndarray) -> tuple[np.ndarray, VectorJacobianProduct]:
        log_pred, vjp = self.model.log_predict(self.full(theta))
        return log_pred, lambda cotangent: vjp(cotangent) @ self.basis.T


# --------------------------------------------------------------------------------------------------
# Objective: sum over runs of rho(log L_pred - log L_obs), rho = Huber(delta); delta = inf is 0.5 r^2.
# --------------------------------------------------------------------------------------------------


def _huber(residual: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative (scipy.special.huber convention: r^2/2 inside delta)."""
    clipped = np.clip(residual, -delta, delta)
    return clipped * (residual - 0.5 * clipped), clipped


@dataclass(frozen=True)
class _Objective:
    model: _LogModel
    log_loss: np.ndarray
    huber_delta: float
    run_weights: np.ndarray | None = None  # (resamples, runs) bootstrap counts; rows select a resample

    def astype(self, dtype: type) -> _Objective:
        """The same objective evaluated in ``dtype`` (float32 halves the cost of screening starts)."""
        return _Objective(
            self.model.astype(dtype), self.log_loss.astype(dtype), self.huber_delta, self.run_weights
        )

    def log_predictions(self, theta: np.ndarray) -> np.ndarray:
        """log L_pred for every row of theta; inf or nan where a row's parameters are wild."""
        with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
            return self.model.log_predict(theta)[0]

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        """log(L_obs) - log(L_pred) at a single parameter vector."""
        return self.log_loss - self.log_predictions(theta[None, :])[0]

    def value_and_grad(
        self, theta: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Objective and gradient for every row of theta; ``rows`` picks each row's bootstrap weights.
        Rows are processed in chunks so that the (rows x runs) temporaries stay in cache."""
        values = np.empty(len(theta))
        gradient = np.empty_like(theta, dtype=float)
        chunk_rows = max(1, _CHUNK_ELEMENTS // len(self.log_loss))
        # Wild trial points may overflow; their non-finite values are rejected by the line searches.
        with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
            for start in range(0, len(theta), chunk_rows):
                chunk = slice(start, start + chunk_rows)
                values[chunk], gradient[chunk] = self._chunk_value_and_grad(
                    theta[chunk], None if rows is None else rows[chunk]
                )
        return values, gradient

    def _chunk_value_and_grad(
        self, theta: np.ndarray, rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        log_pred, vjp = self.model.log_predict(theta.astype(self.log_loss.dtype, copy=False))
        residual = np.subtract(log_pred, self.log_loss, out=log_pred)
        loss, slope = _huber(residual, self.huber_delta)
        if self.run_weights is not None:
            weights = self.run_weights[rows]
            loss *= weights
            slope *= weights
        return loss.sum(axis=1), vjp(slope)

    def scalar(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        values, gradient = self.value_and_grad(theta[None, :], np.zeros(1, dtype=int))
        return float(values[0]), gradient[0]
