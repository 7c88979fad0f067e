"""Reconstruction quality of the image tokenizer on a split: PSNR (dB, 0-255 images) and codebook usage."""
import numpy as np
from src.utils.progress import progress

from src.data.transforms import to_uint8
from src.models.vq import codebook_usage, psnr


def evaluate_reconstruction(vq, source, image_size, batch_size, grid_images=0):
    """Encode and decode every image of `source` (an ImageSource) with `vq`.

    Returns (metrics, pairs): metrics = {"images", "psnr" (mean of per-image PSNR), "psnr_of_mean_mse" (PSNR of the
    split's mean squared error), "perplexity", "used_fraction", "used_codes", "codebook_size"}; pairs = uint8
    (2 * n, H, W, 3), original then reconstruction of the first n = grid_images images.
    """
    per_image, squared, codes, pairs = [], [], [], []
    batches = source.dataset(np.arange(len(source)), image_size, batch_size)
    total = -(-len(source) // batch_size)
    for batch in progress(batches.create_dict_iterator(num_epochs=1, output_numpy=True), total=total, desc="eval",
                          leave=False):
        images = batch["image"]
        batch_codes = vq.encode(images)
        original, rebuilt = to_uint8(images), to_uint8(vq.decode(batch_codes))
        per_image.append(psnr(original, rebuilt))
        squared.append(np.mean((original.astype(np.float64) - rebuilt) ** 2, axis=(1, 2, 3)))
        codes.append(batch_codes)
        for a, b in zip(original, rebuilt):
            if len(pairs) < 2 * grid_images:
                pairs += [a, b]
    per_image, squared = np.concatenate(per_image), np.concatenate(squared)
    metrics = {"images": int(len(per_image)), "psnr": float(np.mean(per_image)),
               "psnr_of_mean_mse": float(10.0 * np.log10(255.0 ** 2 / max(np.mean(squared), 1e-12))),
               **codebook_usage(np.concatenate([c.reshape(-1) for c in codes]), vq.codebook_size),
               "codebook_size": vq.codebook_size}
    return metrics, (np.stack(pairs) if pairs else np.zeros((0, image_size, image_size, 3), np.uint8))
