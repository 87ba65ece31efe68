import numpy as np

from state.item_index import ItemIndex


def unit(*xs):
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_top_k_orders_by_dot_product_and_skips_excluded_and_removed():
    index = ItemIndex(dim=2, capacity=2)  # forces a grow
    index.upsert("a", unit(1, 0))
    index.upsert("b", unit(1, 1))
    index.upsert("c", unit(0, 1))
    index.upsert("d", unit(-1, 0))
    index.remove("d")
    (ranked,) = index.top_k(unit(1, 0.1)[None], k=3, exclude=[set()])
    assert [i for i, _ in ranked] == ["a", "b", "c"]
    (ranked,) = index.top_k(unit(1, 0.1)[None], k=3, exclude=[{"a"}])
    assert [i for i, _ in ranked] == ["b", "c"]


def test_removed_row_is_reused_and_vectors_of_marks_unknown():
    index = ItemIndex(dim=2, capacity=2)
    index.upsert("a", unit(1, 0))
    index.remove("a")
    index.upsert("b", unit(0, 1))
    assert len(index) == 1 and len(index.live) == 2
    vectors, known = index.vectors_of(["b", "zzz"])
    assert known.tolist() == [True, False]
    assert np.allclose(vectors[0], unit(0, 1)) and not vectors[1].any()


def test_category_matrix_marks_each_rows_categories_and_nothing_for_no_item():
    index = ItemIndex(dim=2, capacity=2)  # forces a grow, and a wider category array for "c"
    index.upsert("a", unit(1, 0), ["Drama"])
    index.upsert("b", unit(0, 1), ["Comedy", "Drama"])
    index.upsert("c", unit(1, 1), ["Horror", "Comedy", "Sci-Fi"])
    index.upsert("b", unit(0, 1), ["Horror"])  # re-categorised
    index.remove("a")
    rows = np.array([index.row_of["b"], index.row_of["c"], -1, index.row_of["b"]])
    matrix = index.category_matrix(rows)
    # The columns are the categories of these rows (not Drama: only "a" had it, and "a" is gone), any order.
    assert matrix.shape == (4, 3)
    sets = [set(np.flatnonzero(row).tolist()) for row in matrix]
    horror = next(iter(sets[0]))
    assert sets[0] == sets[3] == {horror} and horror in sets[1] and len(sets[1]) == 3 and sets[2] == set()
    assert index.category_matrix(np.array([-1, -1])).shape == (2, 1)  # no categories: one empty column
