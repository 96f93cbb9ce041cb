"""metrics/retrieval.py on constructed cases (hand-computed ranks) and against a brute-force loop.
Run: python -m pytest -q tests/test_metrics_retrieval.py"""
import numpy as np
import pytest
import torch

from metrics.retrieval import alignment_statistics, retrieval_metrics


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
