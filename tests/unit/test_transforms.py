"""Image and audio transforms: shapes, dtypes, normalisation values, WAV reading, resampling, log-mel, features."""

import io
import wave

import numpy as np
import pytest
from PIL import Image

import mindspore.dataset as ds

from src.data.transforms import (image_transforms, load_audio, load_image, log_mel, pad_or_truncate,
                                 random_resized_crop_box, read_wav, resample)
from src.errors import UserError

# ImageNet-normalised value of a pure red pixel (255, 0, 0): ((p / 255) - mean) / std per channel.
RED_NORMALISED = np.array([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225], dtype=np.float32)


def _encode(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, quality=95)
    return buffer.getvalue()


def _solid(height, width, colour):
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (height, width, 3)).copy()


def _gradient(height, width):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) % 256], axis=-1).astype(np.uint8)


def _apply(ops, data):
    for op in ops:
        data = op(data)
    return data


def _write_wav(path, channels, rate, width=2):
    """Write int samples of shape (N, channels) as PCM."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels.shape[1])
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(np.ascontiguousarray(channels).tobytes())


def _sine(freq, rate, seconds, amplitude=0.5):
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


# ---------------------------------------------------------------------------------------------------- image


def test_eval_transform_normalises_red_jpeg(tmp_path):
    path = tmp_path / "red.jpg"
    path.write_bytes(_encode(_solid(48, 64, (255, 0, 0)), "JPEG"))
    image = load_image(str(path), 32)
    assert image.shape == (3, 32, 32) and image.dtype == np.float32
    # JPEG may shift a channel by a level or two: 2 / (0.224 * 255) ~ 0.035
    for channel in range(3):
        np.testing.assert_allclose(image[channel], RED_NORMALISED[channel], atol=0.05)


def test_png_red_is_exact_and_ops_match_load_image():
    data = _encode(_solid(40, 30, (255, 0, 0)), "PNG")
    via_ops = _apply(image_transforms(16, train=False), np.frombuffer(data, np.uint8))
    eager = load_image(data, 16)
    assert via_ops.shape == (3, 16, 16)
    np.testing.assert_allclose(eager[:, 0, 0], RED_NORMALISED, rtol=1e-5)
    np.testing.assert_array_equal(eager, via_ops)
    np.testing.assert_array_equal(eager, load_image(data, 16))


def test_eval_resizes_shorter_side_then_centre_crops():
    # 20 x 60 image: left third red, middle third green, right third blue -> centre crop of the resize is all green
    array = np.concatenate([_solid(20, 20, (255, 0, 0)), _solid(20, 20, (0, 255, 0)), _solid(20, 20, (0, 0, 255))],
                           axis=1)
    image = load_image(_encode(array, "PNG"), 10)
    green = np.array([(0 - 0.485) / 0.229, (1 - 0.456) / 0.224, (0 - 0.406) / 0.225], dtype=np.float32)
    np.testing.assert_allclose(image[:, 2:8, 2:8].reshape(3, -1).T, np.tile(green, (36, 1)), rtol=1e-5)


def test_train_crop_is_reproducible_from_rng():
    data = _encode(_gradient(60, 80), "PNG")
    first = load_image(data, 24, train=True, rng=np.random.default_rng(3))
    again = load_image(data, 24, train=True, rng=np.random.default_rng(3))
    other = load_image(data, 24, train=True, rng=np.random.default_rng(4))
    assert first.shape == (3, 24, 24) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_hflip_mirrors_and_is_off_by_default():
    data = _encode(_gradient(32, 32), "PNG")
    plain = load_image(data, 32)
    flips = [load_image(data, 32, train=True, rng=np.random.default_rng(seed), random_resized_crop=False, hflip=True)
             for seed in range(12)]
    mirrored = [np.array_equal(image, plain[:, :, ::-1]) for image in flips]
    unchanged = [np.array_equal(image, plain) for image in flips]
    assert all(m or u for m, u in zip(mirrored, unchanged)) and any(mirrored) and any(unchanged)
    no_flip = [load_image(data, 32, train=True, rng=np.random.default_rng(seed), random_resized_crop=False)
               for seed in range(12)]
    assert all(np.array_equal(image, plain) for image in no_flip)
    assert not any(type(op).__name__ == "RandomHorizontalFlip" for op in image_transforms(32, train=True))


def test_crop_box_respects_scale_ratio_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, height, width = random_resized_crop_box(90, 120, rng, scale=(0.5, 1.0))
        assert 0 <= top and top + height <= 90 and 0 <= left and left + width <= 120
        assert 0.5 * 90 * 120 * 0.93 <= height * width <= 90 * 120
        assert 3 / 4 * 0.9 <= width / height <= 4 / 3 * 1.1
    # a 10 x 1000 strip cannot hold any 0.8-1.0 crop with ratio <= 4/3: fall back to the centred 10 x 13 crop
    assert random_resized_crop_box(10, 1000, rng) == (0, 493, 10, 13)


def test_train_ops_run_in_a_dataset_pipeline():
    images = [np.frombuffer(_encode(_gradient(30 + 10 * i, 50), "JPEG"), np.uint8) for i in range(3)]
    dataset = ds.GeneratorDataset(lambda: ((image,) for image in images), ["image"], shuffle=False)
    dataset = dataset.map(image_transforms(16, train=True, hflip=True), input_columns=["image"])
    outputs = [row["image"] for row in dataset.create_dict_iterator(output_numpy=True)]
    assert len(outputs) == 3 and all(o.shape == (3, 16, 16) and o.dtype == np.float32 for o in outputs)


def test_bad_images_raise_user_errors(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(UserError, match="broken.jpg"):
        load_image(str(broken), 16)
    with pytest.raises(UserError, match="missing.jpg"):
        load_image(str(tmp_path / "missing.jpg"), 16)


# ---------------------------------------------------------------------------------------------------- audio


def test_read_wav_mono_stereo_and_8bit(tmp_path):
    wave_values = _sine(440, 16000, 0.1)
    mono = np.round(wave_values * 32767).astype("<i2")[:, None]
    _write_wav(tmp_path / "mono.wav", mono, 16000)
    samples, rate = read_wav(tmp_path / "mono.wav")
    assert rate == 16000 and samples.dtype == np.float32 and samples.shape == (1600,)
    np.testing.assert_allclose(samples, mono[:, 0] / 32768.0, atol=1e-7)

    stereo = np.stack([mono[:, 0], np.zeros_like(mono[:, 0])], axis=1)
    _write_wav(tmp_path / "stereo.wav", stereo, 8000)
    samples, rate = read_wav(tmp_path / "stereo.wav")
    assert rate == 8000 and samples.shape == (1600,)
    np.testing.assert_allclose(samples, mono[:, 0] / 65536.0, atol=1e-7)

    eight_bit = np.array([[0], [128], [255]], dtype=np.uint8)
    _write_wav(tmp_path / "eight.wav", eight_bit, 8000, width=1)
    np.testing.assert_allclose(read_wav(tmp_path / "eight.wav")[0], [-1.0, 0.0, 127 / 128])


def test_unreadable_wavs_name_the_file(tmp_path):
    _write_wav(tmp_path / "deep.wav", np.zeros((10, 3), np.uint8), 16000, width=3)
    with pytest.raises(UserError, match="deep.wav.*24-bit"):
        read_wav(tmp_path / "deep.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF1234junk")
    with pytest.raises(UserError, match="junk.wav"):
        read_wav(tmp_path / "junk.wav")
    _write_wav(tmp_path / "empty.wav", np.zeros((0, 1), "<i2"), 16000)
    with pytest.raises(UserError, match="empty.wav.*no samples"):
        read_wav(tmp_path / "empty.wav")
    with pytest.raises(UserError, match="nowhere.wav"):
        read_wav(tmp_path / "nowhere.wav")


def test_resample_8k_to_16k_keeps_the_sine_frequency():
    upsampled = resample(_sine(440, 8000, 1.0).astype(np.float32), 8000, 16000)
    assert upsampled.dtype == np.float32 and upsampled.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(upsampled))
    assert np.argmax(spectrum) * 16000 / len(upsampled) == pytest.approx(440, abs=1)
    # away from the edges the waveform is the 16 kHz sine itself
    np.testing.assert_allclose(upsampled[200:-200], _sine(440, 16000, 1.0)[200:-200], atol=0.01)


def test_log_mel_frame_count_and_peak_bin():
    for length in (400, 1599, 1600, 16000, 16159):
        assert log_mel(np.zeros(length, np.float32)).shape == (1 + length // 160, 80)
    silence = log_mel(np.zeros(1600, np.float32))
    np.testing.assert_allclose(silence, np.log(1e-6), rtol=1e-6)
    assert log_mel(np.zeros(100, np.float32)).shape == (3, 80)  # padded to one 400-sample window

    # 1 kHz tone: the loudest band is the HTK mel filter whose centre is closest to mel(1000)
    frames = log_mel(_sine(1000, 16000, 0.5).astype(np.float32))
    assert frames.dtype == np.float32
    mel = lambda hz: 2595 * np.log10(1 + hz / 700)  # noqa: E731 - the HTK formula, for the expected value
    centres = np.linspace(0, mel(8000), 82)[1:-1]
    expected = int(np.argmin(np.abs(centres - mel(1000))))
    assert np.argmax(frames[10:-10].mean(axis=0)) == expected


def test_load_audio_wav_is_resampled_log_mel_padded_to_max_frames(tmp_path):
    _write_wav(tmp_path / "clip.wav", np.round(_sine(440, 8000, 0.5) * 32767).astype("<i2")[:, None], 8000)
    frames, mask = load_audio(tmp_path / "clip.wav", max_frames=64)
    assert frames.shape == (64, 80) and frames.dtype == np.float32 and mask.dtype == np.int32
    # 0.5 s at 16 kHz = 8000 samples -> 1 + 8000 // 160 = 51 frames
    np.testing.assert_array_equal(mask, [1] * 51 + [0] * 13)
    assert np.all(frames[51:] == 0) and np.all(frames[:51] != 0)
    frames, mask = load_audio(tmp_path / "clip.wav", max_frames=20, n_mels=40)
    assert frames.shape == (20, 40) and mask.sum() == 20


def test_load_audio_npy_features_pass_through_and_dim_check(tmp_path):
    features = np.arange(7 * 5, dtype=np.float64).reshape(7, 5)
    np.save(tmp_path / "feat.npy", features)
    frames, mask = load_audio(tmp_path / "feat.npy", max_frames=10, feature_dim=5)
    assert frames.dtype == np.float32 and frames.shape == (10, 5)
    np.testing.assert_array_equal(frames[:7], features)
    np.testing.assert_array_equal(frames[7:], 0)
    np.testing.assert_array_equal(mask, [1] * 7 + [0] * 3)
    frames, mask = load_audio(tmp_path / "feat.npy", max_frames=4)
    np.testing.assert_array_equal(frames, features[:4])
    assert mask.sum() == 4
    with pytest.raises(UserError, match="feat.npy.*dimension 5.*1024"):
        load_audio(tmp_path / "feat.npy", max_frames=10, feature_dim=1024)
    np.save(tmp_path / "flat.npy", np.zeros(12, np.float32))
    with pytest.raises(UserError, match="flat.npy"):
        load_audio(tmp_path / "flat.npy", max_frames=10)
    with pytest.raises(UserError, match="clip.mp3"):
        load_audio(tmp_path / "clip.mp3", max_frames=10)
    with pytest.raises(UserError, match="gone.npy"):
        load_audio(tmp_path / "gone.npy", max_frames=10)


def test_pad_or_truncate():
    padded, mask = pad_or_truncate(np.array([[1, 2], [3, 4]], np.int32), 3)
    np.testing.assert_array_equal(padded, [[1, 2], [3, 4], [0, 0]])
    np.testing.assert_array_equal(mask, [1, 1, 0])
    assert padded.dtype == np.int32 and mask.dtype == np.int32
    cut, mask = pad_or_truncate(np.arange(5.0), 2)
    np.testing.assert_array_equal(cut, [0.0, 1.0])
    np.testing.assert_array_equal(mask, [1, 1])
    empty, mask = pad_or_truncate(np.zeros((0, 3), np.float32), 2)
    assert empty.shape == (2, 3) and mask.sum() == 0


def test_log_mel_equals_mindspore_mel_spectrogram():
    import mindspore.dataset.audio as audio_ops
    from src.data.transforms import log_mel
    x = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    reference = audio_ops.MelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=80)(x)
    np.testing.assert_allclose(log_mel(x), np.log(reference.T + 1e-6), atol=1e-4)


# ------------------------------------------------------------------------- image rules: alpha, EXIF, crop | pad


def _normalised(colour):
    """ImageNet-normalised value of an RGB pixel, computed by hand: ((p / 255) - mean) / std per channel."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((np.array(colour, np.float64) / 255.0 - mean) / std).astype(np.float32)


def _rgba_png(alpha):
    """A 40x40 RGBA PNG: every pixel's colour pink (255, 105, 180), alpha as given (0 = fully transparent)."""
    pixels = np.zeros((40, 40, 4), np.uint8)
    pixels[..., :3] = (255, 105, 180)
    pixels[..., 3] = alpha
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0)])
def test_transparent_pixels_take_the_background_not_their_colour(background):
    image = load_image(_rgba_png(0), 32, background=background)
    np.testing.assert_allclose(image[:, 5, 5], _normalised(background), atol=1e-5)
    np.testing.assert_allclose(image, np.broadcast_to(_normalised(background)[:, None, None], image.shape), atol=1e-5)


def test_half_transparent_pixels_are_blended_and_the_pipeline_agrees():
    """alpha 128 over white: 255 * a + bg * (1 - a), rounded by PIL's alpha_composite; the dataset map equals."""
    image = load_image(_rgba_png(128), 32)
    a = 128 / 255
    expected = [round(c * a + 255 * (1 - a)) for c in (255, 105, 180)]
    np.testing.assert_allclose(image[:, 16, 16], _normalised(expected), atol=0.02)  # +-1 grey level of rounding
    mapped = _apply(image_transforms(32, train=False), np.frombuffer(_rgba_png(128), np.uint8))
    np.testing.assert_array_equal(mapped, image)


def test_palette_and_la_transparency_are_composited():
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([255, 105, 180] + [0, 0, 0] * 255)
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", transparency=0)
    la = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 2), np.uint8), "LA").save(la, "PNG")
    for data in (buffer.getvalue(), la.getvalue()):
        image = load_image(data, 32, background=(0, 0, 255))
        np.testing.assert_allclose(image[:, 10, 10], _normalised((0, 0, 255)), atol=1e-5)


def _exif_jpeg(orientation):
    """A 64x32 (w x h) JPEG, left half red and right half blue, stored with EXIF Orientation `orientation`."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("orientation, top, bottom", [(6, "red", "blue"), (8, "blue", "red")])
def test_exif_orientation_is_applied(orientation, top, bottom):
    """Orientation 6 means "rotate 90 degrees clockwise to view": the left (red) half comes out on top; 8 is the
    other way. The stored 64x32 layout becomes 32 wide and 64 high; the centre crop keeps rows 16-47 of it."""
    colours = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    image = load_image(_exif_jpeg(orientation), 32)
    np.testing.assert_allclose(image[:, 2, 16], _normalised(colours[top]), atol=0.15)
    np.testing.assert_allclose(image[:, 29, 16], _normalised(colours[bottom]), atol=0.15)
    from src.data.transforms import decode_image
    assert decode_image(_exif_jpeg(orientation)).shape == (64, 32, 3)
    mapped = _apply(image_transforms(32, train=False), np.frombuffer(_exif_jpeg(orientation), np.uint8))
    np.testing.assert_array_equal(mapped, image)


def _elongated():
    """200 wide, 50 high, green, with a red object at the left end (x < 20)."""
    pixels = _solid(50, 200, (0, 255, 0))
    pixels[:, :20] = (255, 0, 0)
    return _encode(pixels, "PNG")


def test_resize_crop_cuts_an_elongated_image_and_pad_keeps_it():
    """crop: 50 -> 32 high, 200 -> 128 wide, the central 32 columns are original x 75-125: all green, the red end is
    gone. pad: 200 -> 32 wide, 50 -> 8 high, rows 12-19 hold the image (offset (32 - 8) // 2), the rest is the pad
    colour; the red end (x < 20) becomes columns 0-2."""
    red, green = _normalised((255, 0, 0)), _normalised((0, 255, 0))
    crop = load_image(_elongated(), 32)
    np.testing.assert_allclose(crop, np.broadcast_to(green[:, None, None], crop.shape), atol=1e-5)
    pad = load_image(_elongated(), 32, resize="pad", pad_color=(0, 0, 255))
    np.testing.assert_allclose(pad[:, 16, 1], red, atol=1e-5)
    np.testing.assert_allclose(pad[:, 16, 20], green, atol=1e-5)
    blue = _normalised((0, 0, 255))[:, None, None]
    np.testing.assert_allclose(pad[:, :12], np.broadcast_to(blue, (3, 12, 32)), atol=1e-5)
    np.testing.assert_allclose(pad[:, 20:], np.broadcast_to(blue, (3, 12, 32)), atol=1e-5)
    np.testing.assert_allclose(pad[:, 12:20, 5:], np.broadcast_to(green[:, None, None], (3, 8, 27)), atol=1e-5)
    white = load_image(_elongated(), 32, resize="pad")  # pad_color None: the background
    np.testing.assert_allclose(white[:, 0, 0], _normalised((255, 255, 255)), atol=1e-5)
    mapped = _apply(image_transforms(32, train=False, resize="pad", pad_color=(0, 0, 255)),
                    np.frombuffer(_elongated(), np.uint8))
    np.testing.assert_array_equal(mapped, pad)


def test_image_rules_come_from_the_config_and_are_checked():
    from src.config import load_config
    from src.data.transforms import image_rules
    from tests.helpers import ROOT
    import os
    cfg = load_config(os.path.join(ROOT, "config", "caption", "tiny.yaml"),
                      ["data.resize=pad", "data.background=[0,0,0]"])
    assert image_rules(cfg.data) == {"background": (0, 0, 0), "resize": "pad", "pad_color": None}
    with pytest.raises(UserError, match="data.resize"):
        image_rules(cfg.with_updates({"data.resize": "stretch"}).data)
    with pytest.raises(UserError, match="data.background"):
        image_rules(cfg.with_updates({"data.background": [0, 0]}).data)


def test_sixteen_bit_grey_png_keeps_its_high_byte_like_vision_decode():
    """PIL's convert("RGB") clips 16-bit grey to white; the decode keeps the high byte, as vision.Decode does."""
    import mindspore.dataset.vision as vision
    from src.data.transforms import decode_image
    grey = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "PNG")
    data = np.frombuffer(buffer.getvalue(), np.uint8)
    decoded = decode_image(data)
    np.testing.assert_array_equal(decoded[..., 0], grey >> 8)
    np.testing.assert_array_equal(decoded, vision.Decode()(data))
