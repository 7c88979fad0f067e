"""Retrieval fine-tuning: the ranking objective of the original OPT plus the contrastive loss of the towers.

For a batch of B matched (text, image) pairs, the cross-encoder scores s = sigmoid(pair logit) = P("matched") of

* the B positives (t_i, v_i);
* for every text t_i: its hard negative image (highest itc similarity among the other images of the batch) and a
  random other image;
* for every image v_i: its hard negative text and a random other text.

Ranking loss = mean over the 4B negatives of max(0, s_neg - s_pos + margin) (the original: margin 0.2, one random
negative per direction, sigmoid of a 1-logit head initialised from the 5-way matching head). Here the score comes
from the 2-way text-image pair head, which pre-training's matching task trains on exactly this question, so it needs
no remapping. Total loss = ranking + itc_weight * symmetric InfoNCE of the tower embeddings. Hard negatives are
chosen on stop-gradient similarities; with `hard_negatives` off every negative is random.
"""
import mindspore as ms
from mindspore import nn, ops


from .losses import info_nce


class RetrievalTask(nn.Cell):
    input_names = ("text_ids", "text_mask", "image")

    def __init__(self, model, margin=0.2, itc_weight=1.0, hard_negatives=True):
        super().__init__(auto_prefix=False)
        self.model = model
        self.margin, self.itc_weight, self.hard_negatives = float(margin), float(itc_weight), bool(hard_negatives)

    def random_others(self, b):
        """For each row i, a uniformly drawn other row (i + shift) % b with shift in [1, b - 1]."""
        shift = ops.randint(1, b, (b,), dtype=ms.int32)
        return (ops.arange(0, b, dtype=ms.int32) + shift) % b

    def negatives(self, sim):
        """(image negative of each text, text negative of each image), each (B,) int32."""
        b = sim.shape[0]
        if not self.hard_negatives:
            return self.random_others(b), self.random_others(b)
        masked = sim - ops.eye(b, b, ms.float32) * 1e4
        return ops.cast(ops.argmax(masked, 1), ms.int32), ops.cast(ops.argmax(masked, 0), ms.int32)

    def construct(self, text_ids, text_mask, image):
        m = self.model
        b = text_ids.shape[0]
        text, t_mask = m.encode_text(text_ids, text_mask)
        img, i_mask = m.encode_image(image)
        t_feat, i_feat = m.text_features(text, t_mask), m.image_features(img)
        hard_image, hard_text = self.negatives(ops.stop_gradient(ops.matmul(t_feat, i_feat.T)))
        rows = ops.arange(0, b, dtype=ms.int32)
        t_idx = ops.concat((rows, rows, rows, hard_text, self.random_others(b)))
        v_idx = ops.concat((rows, hard_image, self.random_others(b), rows, rows))
        scores = ops.sigmoid(m.pair_score(ops.gather(text, t_idx, 0), ops.gather(t_mask, t_idx, 0),
                                          ops.gather(img, v_idx, 0), ops.gather(i_mask, v_idx, 0)))
        positive = scores[:b]
        negative = scores[b:].reshape(4, b)
        ranking = ops.relu(negative - ops.expand_dims(positive, 0) + self.margin).mean()
        if self.itc_weight == 0:
            return ranking
        return ranking + self.itc_weight * info_nce(t_feat, i_feat, m.contrastive.scale())
