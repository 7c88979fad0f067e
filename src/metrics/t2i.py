"""Text-to-image metric: R-precision of generated images (the VQ reconstruction PSNR is `src.models.vq.psnr`).

R-precision (as in AttnGAN / DALL-E evaluations, here with the model's own contrastive towers): prompt i generated
image i; for each prompt, a pool of `pool_size` images holds its own image and pool_size - 1 images generated for
other prompts. R@k is the percentage of prompts whose own image is among the k best of the pool; ties count against
the own image (as in src/metrics/retrieval.py), so R@1 needs a strict win. A random scorer gets 100 k / pool_size.
"""
import numpy as np

from src.errors import UserError

POOL_SIZE = 100


def pool_others(n, pool_size=POOL_SIZE, seed=0):
    """For each of n items, the indices of the pool_size - 1 other items it is ranked against: all n - 1 others when
    n <= pool_size, else a draw without replacement from np.random.default_rng([seed, i])."""
    pool = min(int(pool_size), n)
    others = []
    for i in range(n):
        rest = np.delete(np.arange(n), i)
        others.append(rest if pool == n else np.random.default_rng([int(seed), i]).choice(rest, size=pool - 1,
                                                                                         replace=False))
    return others


def r_precision(scores, pool_size=POOL_SIZE, seed=0, ks=(1, 5, 10)):
    """R-precision from a square (n_prompts, n_images) score matrix, image j generated for prompt j.

    With n <= pool_size the pool of every prompt is all n images; otherwise prompt i's pool is its own image plus
    pool_size - 1 other images drawn without replacement from np.random.default_rng([seed, i]) (`pool_others`).
    The rank of the own image is 1 + the number of pool images scoring >= it (ties count against it).
    Returns `recall_at_ranks` of those ranks.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] < 2:
        raise UserError(f"R-precision needs a square score matrix of at least 2 prompts, got shape {scores.shape}")
    if np.isnan(scores).any():
        raise UserError("R-precision: scores contain NaN; check the model outputs")
    if pool_size < 2:
        raise UserError(f"R-precision pool size must be >= 2, got {pool_size}")
    n = scores.shape[0]
    ranks = [1 + int((scores[i, others] >= scores[i, i]).sum())
             for i, others in enumerate(pool_others(n, pool_size, seed))]
    return recall_at_ranks(ranks, min(int(pool_size), n), ks)


def recall_at_ranks(ranks, pool, ks=(1, 5, 10)):
    """{"r1", "r5", ...: percent of the (1-based) `ranks` within the top k, "chance_r1", ...: 100 k / pool,
    "pool_size": pool, "n_prompts": len(ranks)}; ks larger than the pool are left out."""
    ranks = np.asarray(ranks, np.int64)
    ks = [int(k) for k in ks if k <= pool]
    result = {f"r{k}": 100.0 * float(np.mean(ranks <= k)) for k in ks}
    result.update({f"chance_r{k}": 100.0 * k / pool for k in ks})
    return {**result, "pool_size": pool, "n_prompts": len(ranks)}
