"""Pre-training tasks. Each is a Cell that computes only its own heads and returns one scalar loss.

Inputs come from `src.data.pretrain_data` batches; `input_names` lists them in the order `construct` takes them (the
audio columns come last and only when the data has audio). The cross-modal sequence is [text | image | audio].

| task | inputs seen by the cross-modal encoder           | loss                                                  |
|------|--------------------------------------------------|-------------------------------------------------------|
| mlm  | masked text, image, audio                        | cross-entropy at the masked text positions            |
| mvm  | text, image with masked patches, audio           | MSE to the standardised stop-gradient image-encoder    |
|      |                                                  | output at masked patches (features mode: to the        |
|      |                                                  | standardised input region features) (+ contrastive)   |
| mam  | text, image, audio with masked tokens            | MSE as for mvm (features mode: to the standardised     |
|      |                                                  | input frame features) + contrastive (cosine / T)       |
| itm  | text, image and audio, some swapped within the   | 5-way cross-entropy (which was swapped) + 2-way        |
|      | global batch; (text, image) pairs                | text-image matching; the heads also read the towers'   |
|      |                                                  | agreement (models.heads.MatchingHead)                  |
| itc  | single-modal towers only                         | symmetric InfoNCE for text-image, text-audio,          |
|      |                                                  | image-audio                                            |
| td   | text fully masked, image/audio partly or fully   | label-smoothed cross-entropy of the text decoder       |
| id   | text, image fully masked, audio                  | label-smoothed cross-entropy of the image decoder      |

Without audio: mam is unavailable, itm keeps only its 2-way text-image part, itc only text-image.
Per sample, audio is present when its frame_mask has a real frame (losses.present_rows; data sets where only some
samples have audio): mam takes no loss from a sample without audio, itm's 5-way part counts only rows whose clip
exists, itc's text-audio and image-audio terms are over the samples with audio alone (a batch with none: text-image
alone).
"""
import mindspore as ms
from mindspore import nn, ops
from mindspore.communication import GlobalComm, get_group_size, get_rank

from src.data.labels import ITM_AUDIO_SWAPPED, ITM_MATCHED

from .losses import (cross_entropy, feature_contrastive, feature_regression, gather_positions, info_nce,
                     masked_info_nce, present_rows, standardize)

BASE_INPUTS = ("text_ids", "text_mask", "image")
AUDIO_INPUTS = ("audio", "frame_mask")


class PretrainTask(nn.Cell):
    extra_inputs = ()          # task-specific batch columns, after the base ones
    audio_inputs = AUDIO_INPUTS  # fed last, only when the data has audio
    needs_audio = False

    def __init__(self, model, pretrain_cfg, has_audio):
        super().__init__(auto_prefix=False)
        self.model = model
        self.cfg = pretrain_cfg
        self.has_audio = has_audio
        self.text_len = model.cfg.text.max_len
        self.image_len = model.image_encoder.num_tokens + 1
        self.input_names = BASE_INPUTS + self.extra_inputs + (self.audio_inputs if has_audio else ())

    def encode(self, text_ids, text_mask, image, image_masked=None, audio=None, frame_mask=None, audio_masked=None):
        """Single-modal encoders and the cross-modal encoder -> (sequence, mask)."""
        m = self.model
        text, t_mask = m.encode_text(text_ids, text_mask)
        img, i_mask = m.encode_image(image, image_masked)
        if audio is None:
            return m.fuse(text, t_mask, img, i_mask)
        aud, a_mask = m.encode_audio(audio, frame_mask, audio_masked)
        return m.fuse(text, t_mask, img, i_mask, aud, a_mask)

    def image_part(self, seq):
        """Patch outputs of the cross-modal sequence (the image's global token excluded)."""
        return seq[:, self.text_len + 1:self.text_len + self.image_len]

    def audio_part(self, seq):
        return seq[:, self.text_len + self.image_len:]

    def masked_feature_loss(self, pred, target, masked, contrastive_weight):
        """Regression at the masked positions, plus the contrastive variant when its weight is above 0."""
        loss = feature_regression(pred, target, masked)
        if contrastive_weight > 0:
            loss = loss + contrastive_weight * feature_contrastive(pred, target, masked,
                                                                   self.cfg.feature_temperature)
        return loss


class MLMTask(PretrainTask):
    extra_inputs = ("mlm_positions", "mlm_labels", "mlm_weights")

    def construct(self, text_ids, text_mask, image, mlm_positions, mlm_labels, mlm_weights, audio=None,
                  frame_mask=None):
        seq, _ = self.encode(text_ids, text_mask, image, None, audio, frame_mask)
        logits = self.model.mlm_logits(gather_positions(seq, mlm_positions))
        return cross_entropy(logits, mlm_labels, mlm_weights)


class MVMTask(PretrainTask):
    extra_inputs = ("image_masked",)

    def construct(self, text_ids, text_mask, image, image_masked, audio=None, frame_mask=None):
        target = standardize(ops.stop_gradient(self.model.image_regression_target(image)))
        if self.model.image_encoder.mode == "features":  # padded region slots never count
            image_masked = image_masked * ops.cast(self.model.split_regions(image)[2], image_masked.dtype)
        seq, _ = self.encode(text_ids, text_mask, image, image_masked, audio, frame_mask)
        pred = self.model.image_regression_head(self.image_part(seq))
        return self.masked_feature_loss(pred, target, image_masked, self.cfg.mvm_contrastive_weight)


class MAMTask(PretrainTask):
    extra_inputs = ("audio_masked",)
    needs_audio = True

    def construct(self, text_ids, text_mask, image, audio_masked, audio, frame_mask):
        target = standardize(ops.stop_gradient(self.model.audio_regression_target(audio, frame_mask)))
        # samples without audio (no real frame) have nothing to reconstruct, whatever audio_masked says
        audio_masked = audio_masked * ops.expand_dims(ops.cast(present_rows(frame_mask), audio_masked.dtype), 1)
        seq, _ = self.encode(text_ids, text_mask, image, None, audio, frame_mask, audio_masked)
        pred = self.model.audio_regression_head(self.audio_part(seq))
        return self.masked_feature_loss(pred, target, audio_masked, self.cfg.mam_contrastive_weight)


class LocalBatch(nn.Cell):
    """One process: the batch is the global batch."""

    def construct(self, x):
        return x

    def full_gradient(self, loss):
        return loss


class GlobalBatch(nn.Cell):
    """The features of every data-parallel rank's batch, in rank order, with gradients through this rank's part only
    (as open_clip's gather_features without gather_with_grad): the other ranks' rows are constants here, and each
    rank's gradient reaches its own rows."""

    def __init__(self, world, rank):
        super().__init__()
        self.world, self.rank = world, rank
        self.gather = ops.AllGather()

    def construct(self, x):
        everyone = ops.stop_gradient(self.gather(x))
        rows = x.shape[0]
        parts = []
        if self.rank > 0:
            parts.append(everyone[:self.rank * rows])
        parts.append(x)
        if self.rank < self.world - 1:
            parts.append(everyone[(self.rank + 1) * rows:])
        return ops.concat(parts, 0)

    def full_gradient(self, loss):
        """`loss` (the same value on every rank) whose gradient is `world` times its own: the data-parallel mean of
        the ranks' gradients, each through its own rows, is then the gradient of the global-batch loss."""
        return loss * self.world - ops.stop_gradient(loss * (self.world - 1))


def global_batch():
    """GlobalBatch when communication is initialised with more than one rank, else LocalBatch."""
    if GlobalComm.INITED and get_group_size() > 1:
        return GlobalBatch(get_group_size(), get_rank())
    return LocalBatch()


class ITMTask(PretrainTask):
    """Three-modal matching (5 classes, see src.data.masking.itm_batch) plus text-image pair matching.

    Each text is paired with the image (and audio) at rows `itm_image_src` (`itm_audio_src`) of the global batch
    (src.data.pretrain_data._MatchingPartners): under data parallelism the raw images and audio of every rank are
    gathered (GlobalBatch; inputs, so nothing flows back to other ranks) and the pairs are encoded here, so the
    negatives come from all ranks and the loss and gradients are those of one process over the whole batch. Positives
    and texts stay local. With one process nothing is gathered: the rows index this batch. Under gradient
    accumulation the images and audio reach every micro-batch whole (src.engine.train_step), as the pool its rows
    index.
    """
    extra_inputs = ("itm_labels", "itm_image_src")
    audio_inputs = AUDIO_INPUTS + ("itm_audio_src",)
    whole_batch_inputs = ("image", "audio", "frame_mask")

    def __init__(self, model, pretrain_cfg, has_audio):
        super().__init__(model, pretrain_cfg, has_audio)
        self.everyone = global_batch()

    def construct(self, text_ids, text_mask, image, itm_labels, itm_image_src, audio=None, frame_mask=None,
                  itm_audio_src=None):
        m = self.model
        g = self.everyone
        text, t_mask = m.encode_text(text_ids, text_mask)
        img, i_mask = m.encode_image(ops.gather(g(image), itm_image_src, 0))
        image_matches = ops.logical_or(ops.equal(itm_labels, ITM_MATCHED), ops.equal(itm_labels, ITM_AUDIO_SWAPPED))
        pair_labels = ops.cast(image_matches, itm_labels.dtype)
        loss = cross_entropy(m.pair_logits(text, t_mask, img, i_mask), pair_labels)
        if audio is not None:
            clip_mask = ops.gather(g(frame_mask), itm_audio_src, 0)
            aud, a_mask = m.encode_audio(ops.gather(g(audio), itm_audio_src, 0), clip_mask)
            # a row counts only when the clip it sees exists: its audio-matched / -swapped label says nothing of
            # an absent clip
            loss = loss + cross_entropy(m.matching_logits(text, t_mask, img, i_mask, aud, a_mask), itm_labels,
                                        present_rows(clip_mask))
        return loss


class ITCTask(PretrainTask):
    """Contrastive alignment over the global batch: under data parallelism the towers' features of every rank are
    gathered (GlobalBatch), so each sample's negatives are the other samples of all ranks, and the loss equals that of
    one process over the whole batch."""

    def __init__(self, model, pretrain_cfg, has_audio):
        super().__init__(model, pretrain_cfg, has_audio)
        self.everyone = global_batch()

    def construct(self, text_ids, text_mask, image, audio=None, frame_mask=None):
        m = self.model
        g = self.everyone
        text, t_mask = m.encode_text(text_ids, text_mask)
        img, _ = m.encode_image(image)
        t, i = g(m.text_features(text, t_mask)), g(m.image_features(img))
        scale = m.contrastive.scale()
        text_image = info_nce(t, i, scale)
        if audio is None:
            return g.full_gradient(text_image)
        aud, a_mask = m.encode_audio(audio, frame_mask)
        a = g(m.audio_features(aud, a_mask))
        present = g(present_rows(frame_mask))  # pairs with an absent clip are neither positives nor negatives
        audio_terms = masked_info_nce(t, a, scale, present) + masked_info_nce(i, a, scale, present)
        terms = 1.0 + 2.0 * ops.cast(present.sum() > 0, ms.float32)  # a batch without audio: text-image alone
        return g.full_gradient((text_image + audio_terms) / terms)


class TDTask(PretrainTask):
    extra_inputs = ("image_masked", "dec_input", "dec_target", "dec_weights")
    audio_inputs = AUDIO_INPUTS + ("audio_masked",)

    def construct(self, text_ids, text_mask, image, image_masked, dec_input, dec_target, dec_weights, audio=None,
                  frame_mask=None, audio_masked=None):
        seq, mask = self.encode(text_ids, text_mask, image, image_masked, audio, frame_mask, audio_masked)
        logits = self.model.text_decoder(dec_input, seq, mask)
        return cross_entropy(logits, dec_target, dec_weights, self.cfg.label_smoothing)


class IDTask(PretrainTask):
    extra_inputs = ("image_masked", "img_dec_input", "img_dec_target", "img_dec_weights")

    def construct(self, text_ids, text_mask, image, image_masked, img_dec_input, img_dec_target, img_dec_weights,
                  audio=None, frame_mask=None):
        seq, mask = self.encode(text_ids, text_mask, image, image_masked, audio, frame_mask)
        logits = self.model.image_decoder(img_dec_input, seq, mask)
        return cross_entropy(logits, img_dec_target, img_dec_weights, self.cfg.label_smoothing)


TASKS = {"mlm": MLMTask, "mvm": MVMTask, "mam": MAMTask, "itm": ITMTask, "itc": ITCTask, "td": TDTask,
         "id": IDTask}


PRETRAIN_TASK_NAMES = tuple(TASKS)


def build_task(name, model, pretrain_cfg, has_audio):
    return TASKS[name](model, pretrain_cfg, has_audio)
