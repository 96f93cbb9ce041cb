"""metrics/retrieval.py on constructed cases (hand-computed ranks), against a brute-force loop, and the
chunked retrieval_metrics_from_embeddings against retrieval_metrics on the full product.
Run: python -m pytest -q tests/test_metrics_retrieval.py"""
import tracemalloc

import numpy as np
import pytest
import torch

from metrics import retrieval
from metrics.retrieval import (alignment_statistics, matched_similarity, retrieval_metrics,
                               retrieval_metrics_from_embeddings)


def test_diagonal_hand_computed():
    # image 0: its text ranks 1; image 1: text 0 (0.9) beats its own (0.5) -> rank 2; image 2: rank 3
    similarity = np.array([[0.9, 0.1, 0.0],
                           [0.9, 0.5, 0.2],
                           [0.8, 0.7, 0.1]])
    out = retrieval_metrics(similarity, ks=(1, 2))
    assert out["i2t/R@1"] == pytest.approx(1 / 3)
    assert out["i2t/R@2"] == pytest.approx(2 / 3)
    assert out["i2t/mean_rank"] == pytest.approx(2.0) and out["i2t/median_rank"] == 2.0
    # text 0 column (0.9, 0.9, 0.8): image 1 ties image 0 -> pessimistic rank 2; text 1: (0.1, .5, .7) -> 2;
    # text 2: (0, .2, .1) -> image 1 (0.2) beats image 2 (0.1) -> 2
    assert out["t2i/R@1"] == 0.0 and out["t2i/mean_rank"] == pytest.approx(2.0)


def test_groups_study_level_and_deduplicated_texts():
    # 4 images of 2 studies (A, A, B, B); 2 deduplicated texts (A, B)
    similarity = torch.tensor([[0.9, 0.1],
                               [0.2, 0.8],      # an A image closer to the B text -> i2t rank 2
                               [0.1, 0.7],
                               [0.3, 0.6]])
    out = retrieval_metrics(similarity, ["A", "A", "B", "B"], ["A", "B"], ks=(1,))
    assert out["i2t/R@1"] == pytest.approx(3 / 4)
    # text A: images (.9 A, .2 A, .1 B, .3 B): best correct .9 -> rank 1; text B: (.1, .8 A, .7, .6) -> rank 2
    assert out["t2i/R@1"] == pytest.approx(1 / 2)
    assert out["t2i/mean_rank"] == pytest.approx(1.5)


def test_constant_similarity_is_not_perfect():
    out = retrieval_metrics(np.zeros((5, 5)))
    assert out["i2t/R@1"] == 0.0 and out["i2t/mean_rank"] == 5.0 and out["t2i/R@5"] == 1.0


def test_matches_brute_force_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n_images, n_texts = int(rng.integers(2, 20)), int(rng.integers(2, 20))
        similarity = np.round(rng.normal(size=(n_images, n_texts)), 1)        # ties on purpose
        image_groups = rng.integers(0, 5, n_images)
        text_groups = rng.integers(0, 5, n_texts)
        out = retrieval_metrics(similarity, image_groups, text_groups, ks=(1, 3))
        ranks = []
        for i in range(n_images):
            correct = [j for j in range(n_texts) if text_groups[j] == image_groups[i]]
            if not correct:
                continue
            best = max(similarity[i, j] for j in correct)
            ranks.append(1 + sum(similarity[i, j] >= best for j in range(n_texts) if j not in correct))
        assert out["i2t/queries_without_positive"] == n_images - len(ranks)
        if ranks:
            assert out["i2t/R@3"] == pytest.approx(np.mean(np.array(ranks) <= 3))
            assert out["i2t/median_rank"] == pytest.approx(np.median(ranks))


def test_alignment_statistics_matrix_and_d2_vector():
    similarity = np.array([[1.0, 0.0], [0.2, 0.6]])
    out = alignment_statistics(similarity)
    assert out["sim_correct"] == pytest.approx(0.8) and out["sim_incorrect"] == pytest.approx(0.1)
    assert out["sim_gap"] == pytest.approx(0.7)
    assert out["sim_correlation"] == pytest.approx(np.corrcoef([1, 0, .2, .6], [1, 0, 0, 1])[0, 1])
    grouped = alignment_statistics(np.ones((3, 3)) * np.arange(3), groups=[0, 0, 1])
    assert grouped["sim_gap"] == pytest.approx((0 + 1 + 0 + 1 + 2) / 5 - (2 + 2 + 0 + 1) / 4)
    d2 = alignment_statistics(np.array([0.9, 0.8, 0.1]), np.array([True, True, False]))
    assert d2["sim_correct"] == pytest.approx(0.85) and d2["sim_incorrect"] == pytest.approx(0.1)
    assert np.isnan(alignment_statistics(np.array([0.3, 0.4]), np.array([1, 1]))["sim_correlation"])


def test_bad_input():
    with pytest.raises(ValueError, match="not square"):
        retrieval_metrics(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="text_groups"):
        retrieval_metrics(np.zeros((2, 3)), [0, 1], [0, 1])


# ----------------------------------------------------------------------------------------------------------
# chunked retrieval: retrieval_metrics_from_embeddings == retrieval_metrics(image @ text.T)

CHUNKS = (16, 256, 999, 2000, 4096)        # 999 does not divide 2,000; 2000 and 4096 give a single block


def quantized_embeddings(rng, count, width=12):
    """(count, width) entries k / 4 with |k| <= 2: each dot product is a multiple of 1/16 below 12 in size,
    exact in float32 whatever order the BLAS sums in, and equal values (ties) are frequent."""
    return torch.from_numpy(rng.integers(-2, 3, (count, width)) / 4).float()


def test_chunked_equals_full_with_ties_and_groups():
    rng = np.random.default_rng(0)
    image, text = quantized_embeddings(rng, 2000), quantized_embeddings(rng, 1900)
    text[1700:] = text[:200]                                        # duplicate reports: exact ties
    image_groups, text_groups = rng.integers(0, 900, 2000), rng.integers(0, 900, 1900)   # several positives
    similarity = image @ text.T                                     # (2000, 1900)
    assert len(np.unique(similarity.numpy())) < 400                 # ~3.8M pairs on a few hundred values
    full = retrieval_metrics(similarity, image_groups, text_groups)
    assert full["i2t/queries_without_positive"] > 0 and full["t2i/queries_without_positive"] > 0
    for chunk in (7,) + CHUNKS:                                     # exact products: any chunk agrees
        assert retrieval_metrics_from_embeddings(image, text, image_groups, text_groups, chunk=chunk) == full
    square_text = quantized_embeddings(rng, 2000)
    full = retrieval_metrics(image @ square_text.T, ks=(1, 5, 10, 50))
    names = np.array([f"study{i}" for i in range(2000)])
    for chunk in CHUNKS:
        assert retrieval_metrics_from_embeddings(image, square_text, ks=(1, 5, 10, 50), chunk=chunk) == full
        assert retrieval_metrics_from_embeddings(image.numpy(), square_text.numpy(), names, names,
                                                 ks=(1, 5, 10, 50), chunk=chunk) == full


def test_chunked_equals_full_on_float_embeddings():
    # unit embeddings as the models give them: equality needs every block entry to be the full product's
    # entry bit for bit, as the BLAS gave it here (metrics/retrieval.py docstring)
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(2000, 64, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(image + 0.3 * torch.randn(2000, 64, generator=generator), dim=-1)
    groups = np.arange(2000) // 3
    similarity = image @ text.T
    full, full_groups = retrieval_metrics(similarity), retrieval_metrics(similarity, groups, groups)
    assert 0.1 < full["i2t/R@1"] < 0.9                              # neither trivial nor hopeless
    for chunk in CHUNKS:
        assert retrieval_metrics_from_embeddings(image, text, chunk=chunk) == full
        assert retrieval_metrics_from_embeddings(image, text, groups, groups, chunk=chunk) == full_groups
        assert np.array_equal(matched_similarity(image, text, chunk), similarity.diagonal().numpy())


def test_chunked_memory_is_chunk_by_n(monkeypatch):
    # N = 20,000: the full float32 matrix would take 1.6 GB (3.2 GB as retrieval_metrics' float64 copy)
    count, chunk = 20000, 256
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(count, 8, generator=generator), dim=-1)
    shapes, block_ranks = [], retrieval._block_ranks

    def recording_block_ranks(similarity, correct, axis):       # every similarity block passes through here
        shapes.append(similarity.shape)
        return block_ranks(similarity, correct, axis)
    monkeypatch.setattr(retrieval, "_block_ranks", recording_block_ranks)
    tracemalloc.start()                                             # numpy registers its arrays here
    out = retrieval_metrics_from_embeddings(image, image.clone(), chunk=chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out["i2t/R@1"] == 1.0 and out["t2i/R@1"] == 1.0 and out["t2i/median_rank"] == 1.0
    assert set(shapes) == {(chunk, count), (count, chunk)} and len(shapes) == 2 * -(-count // chunk)
    assert peak < 8 * chunk * count                                 # 41 MB; the full matrix is 1.6 GB


def test_chunked_bad_input():
    with pytest.raises(ValueError, match="not square"):
        retrieval_metrics_from_embeddings(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="widths differ"):
        retrieval_metrics_from_embeddings(torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="text_groups"):
        retrieval_metrics_from_embeddings(torch.zeros(2, 4), torch.zeros(3, 4), [0, 1], [0, 1])
    with pytest.raises(ValueError, match="chunk"):
        retrieval_metrics_from_embeddings(torch.zeros(2, 4), torch.zeros(2, 4), chunk=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        retrieval_metrics_from_embeddings(torch.tensor([[1.0, float("nan")], [0, 1]]), torch.eye(2), chunk=1)
    with pytest.raises(ValueError, match="NaN or inf"):
        retrieval_metrics_from_embeddings(torch.full((2, 2), 3e38), torch.full((2, 2), 3e38))   # overflow
