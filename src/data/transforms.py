"""Image and audio transforms that turn raw files into the model's input arrays.

Image: float32 (3, S, S), ImageNet mean/std on 0-255 pixels. Every image path (build_mindrecord, the dataset
pipelines, inference, the image tokenizer, the MindIR runner) decodes with `decode_image` (EXIF orientation applied,
transparency composited onto `data.background`) and fits the square with `fit_ops` (`data.resize`: crop | pad).
Audio: float32 (T, D) frames plus an int32 frame mask,
either 80-bin log-mel frames of 16 kHz speech (25 ms window, 10 ms hop) from a `.wav`, or pre-extracted features
from a `.npy` file used as they are.
"""

import functools
import io
import math
import os
import wave

import numpy as np
import mindspore.dataset.audio as audio_ops
import mindspore.dataset.vision as vision

from src.errors import UserError
from src.utils.files import atomic_write

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
DEFAULT_BACKGROUND = (255, 255, 255)  # config/defaults.yaml data.background
RESIZE_MODES = ("crop", "pad")
EXIF_ORIENTATION = 0x0112

SAMPLE_RATE = 16000
WINDOW_SECONDS = 0.025
HOP_SECONDS = 0.010
LOG_EPS = 1e-6

_PCM_DTYPES = {1: np.uint8, 2: np.dtype("<i2"), 4: np.dtype("<i4")}


# ---------------------------------------------------------------------------------------------------- image


def image_rules(data_cfg):
    """The image keywords of `load_image` / `image_transforms` (background, resize, pad_color) from a config's
    `data` section: the one place that reads them."""
    pad = data_cfg.pad_color
    return {"background": _colour(data_cfg.background, "data.background"), "resize": _resize_mode(data_cfg.resize),
            "pad_color": None if pad is None else _colour(pad, "data.pad_color")}


def _colour(value, key):
    try:
        colour = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        colour = ()
    if len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
        raise UserError(f"{key} must be three 0-255 values [R, G, B], got {value!r}; e.g. [255, 255, 255]")
    return colour


def _resize_mode(mode):
    if mode not in RESIZE_MODES:
        raise UserError(f"data.resize must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    return mode


def to_rgb(image, background=DEFAULT_BACKGROUND):
    """A PIL image -> (RGB PIL image, rotated, composited); with `background` None, an image with transparency
    stays RGBA (build_mindrecord re-encodes it so, leaving the background to `data.background` when read).

    EXIF orientation (tag 274, values 2-8) is applied (`PIL.ImageOps.exif_transpose`): `rotated` is True then.
    16-bit grey images keep their high byte (as OpenCV, which `mindspore.dataset.vision.Decode` uses).
    Transparency (RGBA, LA, PA, a palette or grey / RGB image with a `transparency` entry) is composited onto the
    `background` colour instead of being dropped (dropping it shows whatever colour the transparent pixels hold):
    `composited` is True when some pixel was not fully opaque.
    """
    from PIL import Image, ImageOps
    rotated = image.getexif().get(EXIF_ORIENTATION, 1) not in (1, None)
    if rotated:
        image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # 16-bit grey: keep the high byte, as OpenCV does (PIL's convert would clip)
        image = Image.fromarray((np.asarray(image).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8), "L")
    composited = False
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        composited = rgba.getchannel("A").getextrema()[0] < 255
        if composited and background is None:
            return rgba, rotated, composited
        if composited:
            base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
            image = Image.alpha_composite(base, rgba)
    return (image if image.mode == "RGB" else image.convert("RGB")), rotated, composited


def decode_image(path_or_bytes, background=DEFAULT_BACKGROUND):
    """Decode a path, encoded bytes or a MindRecord bytes column into uint8 RGB (H, W, 3) with `to_rgb`'s rules."""
    from PIL import Image
    data, name = _image_bytes(path_or_bytes)
    try:
        with Image.open(io.BytesIO(data.tobytes())) as image:
            image.load()
            rgb = to_rgb(image, background)[0]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"{name}: not a decodable image (JPEG, PNG, BMP or TIFF expected; {err}); "
                        "replace or drop this sample") from err
    return np.asarray(rgb, dtype=np.uint8)


class DecodeImage:
    """`decode_image` as a `dataset.map` op (encoded bytes -> uint8 RGB HWC)."""

    def __init__(self, background=DEFAULT_BACKGROUND):
        self.background = tuple(background)

    def __call__(self, data):
        return decode_image(data, self.background)


class PadToSquare:
    """`data.resize: pad`: resize the longer side to `size` (bilinear, as vision.Resize) and centre the image on a
    size x size square of `color`; nothing of the image is cut."""

    def __init__(self, size, color):
        self.size, self.color = int(size), np.asarray(color, np.uint8)

    def __call__(self, image):
        height, width = image.shape[:2]
        scale = self.size / max(height, width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        if (new_h, new_w) != (height, width):
            image = vision.Resize((new_h, new_w), vision.Inter.BILINEAR)(image)
        out = np.empty((self.size, self.size, 3), np.uint8)
        out[:] = self.color
        top, left = (self.size - new_h) // 2, (self.size - new_w) // 2
        out[top:top + new_h, left:left + new_w] = image
        return out


def _normalise_ops():
    """Scale 0-255 pixels with the ImageNet statistics and move channels first."""
    mean = [255.0 * m for m in IMAGENET_MEAN]
    std = [255.0 * s for s in IMAGENET_STD]
    return [vision.Normalize(mean=mean, std=std), vision.HWC2CHW()]


def fit_ops(image_size, resize="crop", pad_color=None, background=DEFAULT_BACKGROUND):
    """The ops that make the image_size square (`data.resize`): crop = resize the shorter side to `image_size`, then
    cut the central square (bilinear); pad = `PadToSquare` with `pad_color` (None = the background)."""
    if _resize_mode(resize) == "pad":
        return [PadToSquare(image_size, background if pad_color is None else pad_color)]
    return [vision.Resize(image_size, vision.Inter.BILINEAR), vision.CenterCrop(image_size)]


def image_transforms(image_size, train, random_resized_crop=True, crop_scale=(0.8, 1.0), hflip=False,
                     background=DEFAULT_BACKGROUND, resize="crop", pad_color=None):
    """Return the ops for `dataset.map` over encoded image bytes.

    Evaluation: `DecodeImage` (EXIF orientation, alpha onto `background`), `fit_ops` (`resize` crop | pad),
    normalise, HWC->CHW. Training replaces the fit with a random resized crop (when `random_resized_crop`) and adds
    a random horizontal flip when `hflip` (off by default: captions may say "left" or "right"). Random ops draw from
    `mindspore.dataset.config`'s seed.
    """
    ops = [DecodeImage(background)]
    if train and random_resized_crop:
        ops.append(vision.RandomResizedCrop(image_size, scale=tuple(crop_scale), ratio=CROP_RATIO,
                                            interpolation=vision.Inter.BILINEAR))
    else:
        ops.extend(fit_ops(image_size, resize, pad_color, background))
    if train and hflip:
        ops.append(vision.RandomHorizontalFlip(0.5))
    return ops + _normalise_ops()


def random_resized_crop_box(height, width, rng, scale=(0.8, 1.0), ratio=CROP_RATIO, attempts=10):
    """Draw a crop (top, left, crop_height, crop_width) covering `scale` of the area with an aspect ratio in `ratio`.

    Same rule as RandomResizedCrop; when no attempt fits, falls back to the largest centred crop within `ratio`.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    aspect = width / height
    if aspect < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        crop_h, crop_w = height, int(round(height * ratio[1]))
    else:
        crop_h, crop_w = height, width
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def _image_bytes(path_or_bytes):
    """Return (encoded bytes as uint8 array, name for messages) from a path, bytes or a MindRecord bytes column."""
    if isinstance(path_or_bytes, (str, os.PathLike)):
        path = os.fspath(path_or_bytes)
        try:
            return np.fromfile(path, dtype=np.uint8), path
        except OSError as err:
            raise UserError(f"{path}: cannot read the image ({err.strerror}); check the manifest's image path") from err
    data = path_or_bytes
    if isinstance(data, np.ndarray) and data.dtype.kind == "S":
        data = data.reshape(-1)[0]
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(bytes(data), dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8), "<image bytes>"


def load_image(path_or_bytes, image_size, train=False, rng=None, random_resized_crop=True,
               crop_scale=(0.8, 1.0), hflip=False, background=DEFAULT_BACKGROUND, resize="crop", pad_color=None):
    """Decode and transform one image eagerly into float32 (3, image_size, image_size).

    Evaluation applies exactly `image_transforms(image_size, train=False, ...)` (same decode and fit rules).
    Training applies the same kinds of ops but draws the crop box and flip from `rng` (a numpy Generator), so a
    sample's augmentation is reproducible.
    """
    image = decode_image(path_or_bytes, background)
    fit = fit_ops(image_size, resize, pad_color, background)
    if not train:
        geometry = fit
    else:
        rng = np.random.default_rng() if rng is None else rng
        if random_resized_crop:
            top, left, crop_h, crop_w = random_resized_crop_box(image.shape[0], image.shape[1], rng, crop_scale)
            geometry = [vision.Crop((top, left), (crop_h, crop_w)),
                        vision.Resize((image_size, image_size), vision.Inter.BILINEAR)]
        else:
            geometry = fit
        if hflip and rng.random() < 0.5:
            geometry.append(vision.HorizontalFlip())
    for op in geometry + _normalise_ops():
        image = op(image)
    return np.ascontiguousarray(image, dtype=np.float32)


def to_uint8(images):
    """Undo the ImageNet normalisation of float32 images (B, 3, H, W): uint8 (B, H, W, 3), rounded and clipped."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected normalised images (B, 3, H, W), got shape {images.shape}")
    mean = 255.0 * np.asarray(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = 255.0 * np.asarray(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    pixels = np.clip(np.rint(images * std + mean), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))


def write_png(pixels, path, columns=None, gap=2):
    """Write uint8 images (B, H, W, 3) as one PNG: a grid of `columns` per row (default: all in one row) with
    `gap` white pixels between them. The file is written through a temporary name and a rename."""
    from PIL import Image
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 3:
        pixels = pixels[None]
    count, height, width, _ = pixels.shape
    columns = max(1, min(columns or count, count))
    rows = -(-count // columns)
    canvas = np.full((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), 255, np.uint8)
    for index, image in enumerate(pixels):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        canvas[top:top + height, left:left + width] = image
    with atomic_write(path, "wb") as stream:
        Image.fromarray(canvas).save(stream, format="PNG")
    return path


# ---------------------------------------------------------------------------------------------------- audio


def read_wav(path):
    """Read an integer-PCM WAV file (8/16/32-bit, any channel count) as mono float32 in [-1, 1] and its sample rate."""
    try:
        with wave.open(os.fspath(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except FileNotFoundError as err:
        raise UserError(f"{path}: audio file not found; check the manifest's audio path") from err
    except (wave.Error, EOFError, OSError) as err:
        raise UserError(f"{path}: not a readable PCM WAV file ({err}); convert it to 16-bit PCM WAV") from err
    if width not in _PCM_DTYPES:
        raise UserError(f"{path}: {8 * width}-bit samples are not supported; convert it to 16-bit PCM WAV")
    samples = np.frombuffer(raw, dtype=_PCM_DTYPES[width]).astype(np.float32)
    if samples.size == 0:
        raise UserError(f"{path}: the WAV file holds no samples; drop this sample")
    if width == 1:
        samples = (samples - 128.0) / 128.0
    else:
        samples /= float(2 ** (8 * width - 1))
    return samples.reshape(-1, channels).mean(axis=1).astype(np.float32), rate


def resample(samples, sample_rate, target_rate=SAMPLE_RATE):
    """Resample a 1-D float32 signal with windowed-sinc interpolation (`mindspore.dataset.audio.Resample`)."""
    samples = np.asarray(samples, dtype=np.float32)
    if sample_rate == target_rate:
        return samples
    return audio_ops.Resample(float(sample_rate), float(target_rate))(samples).astype(np.float32)


def log_mel(samples, sample_rate=SAMPLE_RATE, n_mels=80):
    """Return log(mel power + 1e-6) frames, float32 (1 + len // hop, n_mels), 25 ms Hann window, 10 ms hop.

    Frames are centred (reflect padding); a signal shorter than one window is zero-padded to one window first.
    The mel filterbank is MindSpore's (`mindspore.dataset.audio.melscale_fbanks`, HTK scale); the power spectrum is
    a numpy STFT, which equals `mindspore.dataset.audio.MelSpectrogram` to 1e-5 and is ~14x faster per clip.
    """
    n_fft = int(round(WINDOW_SECONDS * sample_rate))
    hop = int(round(HOP_SECONDS * sample_rate))
    samples = np.asarray(samples, dtype=np.float32)
    if samples.size < n_fft:
        samples = np.pad(samples, (0, n_fft - samples.size))
    padded = np.pad(samples, (n_fft // 2, n_fft // 2), mode="reflect")
    n_frames = 1 + (len(padded) - n_fft) // hop
    frames = padded[np.arange(n_fft)[None] + hop * np.arange(n_frames)[:, None]]
    power = np.abs(np.fft.rfft(frames * _hann(n_fft), axis=1)) ** 2
    return np.log(power @ _mel_filterbank(n_fft, sample_rate, n_mels) + LOG_EPS).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _hann(n):
    return np.hanning(n + 1)[:-1].astype(np.float32)  # periodic Hann, as MelSpectrogram uses


@functools.lru_cache(maxsize=8)
def _mel_filterbank(n_fft, sample_rate, n_mels):
    return np.asarray(audio_ops.melscale_fbanks(n_freqs=n_fft // 2 + 1, f_min=0.0, f_max=sample_rate / 2.0,
                                                n_mels=n_mels, sample_rate=sample_rate), np.float32)


def pad_or_truncate(x, length):
    """Cut or zero-pad `x` along its first axis to `length`; return (padded, int32 mask of kept rows)."""
    x = np.asarray(x)
    kept = min(len(x), length)
    padded = np.zeros((length,) + x.shape[1:], dtype=x.dtype)
    padded[:kept] = x[:kept]
    mask = np.zeros(length, dtype=np.int32)
    mask[:kept] = 1
    return padded, mask


def _load_features(path):
    """Load a (T, D) float32 feature array from a `.npy` file."""
    try:
        features = np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise UserError(f"{path}: audio feature file not found; check the manifest's audio path") from err
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable .npy array ({err}); re-extract the features") from err
    if features.ndim != 2 or features.dtype.kind not in "fiu":
        raise UserError(f"{path}: audio features must be a numeric (frames, dim) array, got shape "
                        f"{features.shape} dtype {features.dtype}; re-extract the features")
    return features.astype(np.float32)


def load_audio(path, max_frames, n_mels=80, feature_dim=None):
    """Load audio as (frames float32 (max_frames, D), frame_mask int32 (max_frames,)).

    `.wav`: mono, resampled to 16 kHz, log-mel with D = n_mels. `.npy`: pre-extracted (T, D) features as they are.
    When `feature_dim` is given, D must equal it.
    """
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    if extension == ".wav":
        samples, rate = read_wav(path)
        frames = log_mel(resample(samples, rate, SAMPLE_RATE), SAMPLE_RATE, n_mels)
    elif extension == ".npy":
        frames = _load_features(path)
    else:
        raise UserError(f"{path}: audio must be a .wav file or a .npy array of frame features, "
                        f"got '{extension or 'no extension'}'")
    if feature_dim is not None and frames.shape[1] != feature_dim:
        raise UserError(f"{path}: audio frames have dimension {frames.shape[1]} but the model expects "
                        f"{feature_dim}; fix the model's audio feature size or re-extract the features")
    return pad_or_truncate(frames, max_frames)
