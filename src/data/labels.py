"""Label spaces shared by the data's targets and the model's heads: image-decoder token ids and matching classes."""
import numpy as np

# Image-token vocabulary of the image decoder: three specials, then codebook entry c as token c + 3.
IMAGE_PAD_ID = 0
IMAGE_BOS_ID = 1
IMAGE_EOS_ID = 2
IMAGE_TOKEN_OFFSET = 3

# Three-modal matching classes (text is always kept; the image and/or audio may come from other samples).
ITM_SAME_OTHER = 0      # image and audio both from the same other sample
ITM_IMAGE_SWAPPED = 1   # image from another sample, audio matches
ITM_AUDIO_SWAPPED = 2   # audio from another sample, image matches
ITM_BOTH_DIFFERENT = 3  # image and audio from two different other samples
ITM_MATCHED = 4         # all three match
ITM_CLASSES = 5


def image_vocab_size(codebook_size):
    """Size of the image decoder's vocabulary: the codebook plus PAD, BOS and EOS."""
    return codebook_size + IMAGE_TOKEN_OFFSET


def codes_from_tokens(tokens):
    """Turn image-decoder tokens back into VQ codes: stop at the first EOS, drop PAD and BOS, subtract the offset."""
    tokens = np.asarray(tokens, dtype=np.int32).reshape(-1)
    eos = np.flatnonzero(tokens == IMAGE_EOS_ID)
    if eos.size:
        tokens = tokens[:eos[0]]
    return tokens[tokens >= IMAGE_TOKEN_OFFSET] - IMAGE_TOKEN_OFFSET
