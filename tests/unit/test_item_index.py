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
