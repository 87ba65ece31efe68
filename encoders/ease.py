"""EASE: Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019.

An item-item linear model B [N, N] fitted to the binary user x item matrix X [U, N] of the
training interactions:

    min_B ||X - X B||_F^2 + λ ||B||_F^2   subject to diag(B) = 0

The constraint keeps an item from predicting itself (unconstrained, B tends to I as λ -> 0 and
just copies X). The closed form, from the Lagrangian of the constraint, with P = (XᵀX + λI)⁻¹:

    B = I - P · diagMat(1 / diag(P)),   i.e. B_ij = -P_ij / P_jj for i != j, B_jj = 0.

A user's scores are their history row x [N] times B: item j scores Σ_{i in history} B_ij. An item
with no training interaction has a zero column in X, so its column of B is zero: it always scores 0
(EASE recalls no cold items). Numpy only: the fit is one N x N inverse (1,682 items: about a second).
"""

from __future__ import annotations

import numpy as np

from core.datasets import Interactions

L2_GRID = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)  # λ values tried on validation by default


def user_item_matrix(interactions: Interactions) -> np.ndarray:
    """-> X [U, N] float64: 1 where the user has at least one event on the item."""
    X = np.zeros((len(interactions.items), interactions.n_items))
    for u, items in enumerate(interactions.items):
        X[u, items] = 1.0
    return X


def fit(X: np.ndarray, l2: float) -> np.ndarray:
    """X [U, N] binary, l2 = λ > 0 -> B [N, N] with a zero diagonal."""
    gram = X.T @ X  # [N, N] item co-occurrence counts
    P = np.linalg.inv(gram + l2 * np.eye(len(gram)))  # [N, N]
    B = -P / np.diag(P)  # [N, N]: column j divided by P_jj
    np.fill_diagonal(B, 0.0)  # = I - P diagMat(1/diag(P)) on the diagonal: 1 - P_jj / P_jj
    return B


def scores(B: np.ndarray, history: Interactions) -> np.ndarray:
    """B [N, N], history of U users -> [U, N]: each user's history row times B."""
    return user_item_matrix(history) @ B
