"""The retrieval benchmark's arithmetic: pooling the two itm runs and extrapolating itm to the whole set."""
import pytest

from bench.retrieval import _extrapolated_itm, _pair_rate, _pooled


def run(pairs, score_s, other_s, cpu_factor=2.0):
    stages = {"embed_texts": other_s, "embed_images": 0.0, "shortlist": 0.0, "score": score_s, "rank": 0.0}
    total = other_s + score_s
    cpu = {k: v * cpu_factor for k, v in stages.items()}
    return {"pairs_scored": pairs, "seconds": dict(stages), "cpu_seconds": cpu,
            "total": {"seconds": total, "cpu_seconds": total * cpu_factor}}


def test_pooled_itm_rate_is_all_pairs_over_all_scoring_time_not_the_mean_of_rates():
    before, after = run(1000, 10.0, 1.0), run(1000, 40.0, 1.0)  # 100 and 25 pairs/s
    pooled = _pooled(before, after)
    assert pooled["pairs_scored"] == 2000
    assert pooled["total"] == {"seconds": 52.0, "cpu_seconds": 104.0}
    assert _pair_rate(pooled, "seconds") == pytest.approx(2000 / 50.0)


def test_itm_extrapolation_keeps_the_embeddings_and_replaces_shortlist_and_scoring():
    two_stage = run(500, 5.0, 3.0)
    two_stage["seconds"]["shortlist"] = 1.0
    two_stage["total"]["seconds"] += 1.0          # 3 s embeddings + 1 s shortlist + 5 s scoring
    itm_subset = run(1000, 10.0, 0.5)              # 100 pairs/s
    assert _extrapolated_itm(two_stage, itm_subset, 20000, "seconds") == pytest.approx(3.0 + 20000 / 100.0)
