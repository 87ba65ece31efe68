"""EASE (encoders/ease.py) against the problem it solves, and its λ selection (encoders.evaluate).

The closed form is checked against a direct solve of the constrained ridge problem on a tiny
matrix: with diag(B) = 0, column j of B only regresses item j on the other items, so each column
is an ordinary ridge solve without item j. The matrix is chosen so that the usual wrong shortcut
(unconstrained ridge, diagonal zeroed afterwards) gives a different B, i.e. the check can tell.
"""

import numpy as np
import pytest

from core.datasets import Interactions, Split
from encoders import ease
from encoders.evaluate import evaluate_ease, evaluate_scores, warm_items


def interactions(X: np.ndarray) -> Interactions:
    """Binary [U, N] -> Interactions with one event per 1 (event types and times do not matter)."""
    items = [np.flatnonzero(row) for row in X]
    n = X.shape[1]
    return Interactions(
        [str(i) for i in range(n)],
        [""] * n,
        [f"u{u}" for u in range(len(X))],
        items,
        [np.ones(len(s), np.int64) for s in items],
        [np.arange(len(s), dtype=np.float64) for s in items],
    )


def constrained_ridge(X: np.ndarray, l2: float) -> np.ndarray:
    """min ||X - XB||² + λ||B||² s.t. diag(B) = 0, solved column by column."""
    n = X.shape[1]
    B = np.zeros((n, n))
    for j in range(n):
        others = np.arange(n) != j
        A = X[:, others]  # [U, N-1]
        B[others, j] = np.linalg.solve(A.T @ A + l2 * np.eye(n - 1), A.T @ X[:, j])
    return B


@pytest.mark.parametrize("l2", [0.5, 3.0, 50.0])
def test_closed_form_solves_the_constrained_ridge_problem(l2):
    X = (np.random.default_rng(0).random((12, 6)) < 0.4).astype(float)
    direct = constrained_ridge(X, l2)
    unconstrained = np.linalg.solve(X.T @ X + l2 * np.eye(6), X.T @ X)
    np.fill_diagonal(unconstrained, 0.0)
    assert not np.allclose(unconstrained, direct, atol=1e-3)  # the check below can tell a wrong formula

    B = ease.fit(X, l2)
    assert np.allclose(np.diag(B), 0.0)
    np.testing.assert_allclose(B, direct, atol=1e-10)


def test_an_item_without_training_interactions_always_scores_zero():
    rng = np.random.default_rng(1)
    X = (rng.random((20, 8)) < 0.5).astype(float)
    X[:, 3] = 0.0  # item 3: never in training (a cold item)
    B = ease.fit(X, 10.0)
    assert np.all(B[:, 3] == 0.0) and np.all(B[3, :] == 0.0)
    history = interactions((rng.random((5, 8)) < 0.5).astype(float))
    assert np.all(ease.scores(B, history)[:, 3] == 0.0)
    np.testing.assert_allclose(ease.scores(B, history), ease.user_item_matrix(history) @ B)


def test_lambda_is_chosen_on_validation_and_test_is_read_once():
    """Validation targets are what a small λ ranks first, test targets what a large λ ranks first:
    the validation-best λ (the small one) must be chosen, and test must be scored with it."""
    X = (np.random.default_rng(2).random((60, 40)) < 0.3).astype(float)
    train = interactions(X)
    small, large = 1.0, 1000.0

    def top_unseen(l2):
        s = ease.scores(ease.fit(X, l2), train)
        s[X > 0] = -np.inf  # product setting: history excluded
        return s.argmax(axis=1)

    valid_targets, test_targets = top_unseen(small), top_unseen(large)
    assert (valid_targets != test_targets).mean() > 0.3  # the two λ disagree, so the choice matters
    split = Split(train, train, valid_targets, train, test_targets)

    result = evaluate_ease(split, [large, small])
    print(
        "valid NDCG@10 product by λ:",
        {l2: round(e.product["NDCG@10"], 4) for l2, e in result.valid.items()},
        "chosen:",
        result.l2,
        "test NDCG@10 product:",
        round(result.test.product["NDCG@10"], 4),
    )
    assert result.valid[small].product["NDCG@10"] == pytest.approx(1.0)
    assert result.valid[large].product["NDCG@10"] < 1.0
    assert result.l2 == small
    expected = evaluate_scores(ease.scores(ease.fit(X, small), train), train, test_targets, warm_items(train))
    assert result.test.product == expected.product  # scored with the chosen λ ...
    assert result.test.product["NDCG@10"] < 1.0  # ... not the test-best one


def test_evaluate_command_reports_ease_beside_popularity_without_checkpoints(tmp_path):
    """`streamrec evaluate` with baselines only: an EASE row naming the chosen λ, and its validation curve."""
    import json

    from typer.testing import CliRunner

    from encoders.cli import app

    rng = np.random.default_rng(3)
    items = [{"item_id": f"i{i}", "title": f"Film {i}"} for i in range(25)]
    events = [
        {"event_id": f"{u}-{t}", "user_id": f"u{u}", "item_id": f"i{i}", "event_type": "view", "ts": 1000 * t}
        for u in range(30)
        for t, i in enumerate(rng.choice(25, 8, replace=False))
    ]
    (tmp_path / "items.jsonl").write_text("\n".join(map(json.dumps, items)))
    (tmp_path / "events.jsonl").write_text("\n".join(map(json.dumps, events)))

    out = tmp_path / "report.md"
    args = ["evaluate", "--data", str(tmp_path), "--out", str(out), "--ease-lambda", "1", "--ease-lambda", "30"]
    result = CliRunner().invoke(app, args)
    print(result.output)
    assert result.exit_code == 0, result.output
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1].startswith("| popularity | 1 |") and rows[2].startswith("| EASE, λ = ")
    chosen = rows[2].split("λ = ")[1].split(" ")[0]
    curve = {r.split(" | ")[0][2:]: float(r.split(" | ")[1]) for r in rows if r.split(" | ")[0][2:] in ("1", "30")}
    assert chosen == max(curve, key=curve.get)  # the row names the validation-best λ of the printed curve
