"""Synthetic three-modal demo dataset: rendered shape scenes, Chinese/English captions, audio and VQA questions.

Every image shows one or two coloured shapes on a plain light background. Captions, questions and answers are
generated from the same scene spec, so a small model can learn them. Scene specs (the discrete attributes of the
objects) never repeat across splits, so validation and test scenes are unseen in training.

    python -m demo.data --out data/demo --n_train 2000 --n_val 200 --n_test 200 --audio tones
"""
import argparse
import hashlib
import itertools
import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from src.errors import UserError
from src.utils.files import write_jsonl

SPLITS = ("train", "val", "test")
LANGS = ("zh", "en")

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")
SIZES = ("big", "small")
POSITIONS = ("left", "middle", "right")

COLOUR_RGB = {"red": (215, 38, 38), "green": (40, 160, 60), "blue": (40, 80, 215),
              "yellow": (235, 200, 25), "purple": (135, 60, 185), "orange": (245, 135, 20)}

WORDS = {
    "zh": {
        "colour": {"red": "红色", "green": "绿色", "blue": "蓝色",
                   "yellow": "黄色", "purple": "紫色", "orange": "橙色"},
        "shape": {"circle": "圆", "square": "正方形", "triangle": "三角形"},
        "shape_form": {"circle": "圆形", "square": "正方形", "triangle": "三角形"},
        "size": {"big": "大", "small": "小"},
        "position": {"left": "左边", "middle": "中间", "right": "右边"},
        "side": {"left": "左侧", "middle": "正中间", "right": "右侧"},
    },
    "en": {
        "colour": {c: c for c in COLOURS},
        "shape": {s: s for s in SHAPES},
        "plural": {"circle": "circles", "square": "squares", "triangle": "triangles"},
        "size": {z: z for z in SIZES},
        "position": {"left": "left", "middle": "middle", "right": "right"},
        "where": {"left": "on the left", "middle": "in the middle", "right": "on the right"},
        "side": {"left": "on the left side", "middle": "in the centre", "right": "on the right side"},
    },
}

# Layout, as fractions of the image side. Left/right objects can never overlap: the largest reach of the left object
# (0.25 + 0.04 + 0.16) stays 0.10 short of the smallest reach of the right one.
X_CENTRE = {"left": 0.25, "middle": 0.5, "right": 0.75}
RADIUS = {"big": 0.16, "small": 0.10}
JITTER_X, JITTER_Y = 0.04, 0.12
SUPERSAMPLE = 4
JPEG_QUALITY = 95

SINGLE_OBJECT_SHARE = 0.3
CAPTIONS_PER_IMAGE = 5
QUESTIONS_PER_IMAGE = 3
ZERO_COUNT_SHARE = 0.3

SAMPLE_RATE = 16000
TONE_MS, FADE_MS, GAP_MS = 60, 10, 15
TONE_AMPLITUDE = 0.35
TONE_MIN_HZ, TONE_MAX_HZ = 300, 3000
ESPEAK_VOICE = "cmn"

POOL_THRESHOLD = 256
GENERATOR_NAME = "demo.data"
EARLIER_GENERATOR_NAMES = ("src.data.demo",)   # the module's name before it moved out of src
SPLIT_INDEX = {split: k for k, split in enumerate(SPLITS)}


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene, described by attribute keys (English names, see COLOURS, SHAPES, SIZES, POSITIONS)."""
    colour: str
    shape: str
    size: str
    position: str


def scene_spec(scene):
    """The discrete description of a scene as plain lists (what identical images share)."""
    return [[o.colour, o.shape, o.size, o.position] for o in scene]


def scene_hash(scene):
    """A stable content hash of a scene's attributes and positions."""
    return hashlib.sha1(json.dumps(scene_spec(scene)).encode()).hexdigest()[:16]


def all_scenes():
    """Every possible scene: (one-object scenes, two-object scenes), objects ordered left to right."""
    attributes = list(itertools.product(COLOURS, SHAPES, SIZES))
    singles = [(SceneObject(*a, position=p),) for a in attributes for p in POSITIONS]
    pairs = [(SceneObject(*a, position="left"), SceneObject(*b, position="right"))
             for a in attributes for b in attributes]
    return singles, pairs


# ----------------------------------------------------------------------------------------------------------- text
def _object_words(o, lang):
    """Template fields of one object: c colour, s shape, z size, p position phrase, side, form (zh shape noun)."""
    w = WORDS[lang]
    return {"c": w["colour"][o.colour], "s": w["shape"][o.shape], "z": w["size"][o.size],
            "p": w["where" if lang == "en" else "position"][o.position], "side": w["side"][o.position],
            "form": w.get("shape_form", w["shape"])[o.shape]}


def describe_scene(scene, lang):
    """The five caption phrasings of a scene, in a fixed order (callers shuffle them per image)."""
    fields = [_object_words(o, lang) for o in scene]

    def join(sep, template, items=fields):
        return sep.join(template.format(**f) for f in items)

    two = len(scene) == 2
    same_shape = two and scene[0].shape == scene[1].shape
    if lang == "zh":
        kinds = f"两个{fields[0]['s']}" if same_shape else "两个图形"
        return [
            join("，", "{p}有一个{c}的{s}"),
            join("，", "一个{c}的{z}{s}在图片{p}"),
            "图中" + join("，", "{side}是一个{c}{form}"),
            (f"图片里有{kinds}：" if two else "图片") + join("，", "{p}是一个{z}的{c}{s}"),
            "画面" + join("；", "{p}有一个{c}的{s}，它很{z}"),
        ]
    kinds = f"two {WORDS['en']['plural'][scene[0].shape]}" if same_shape else "two shapes"
    captions = [
        join(" and ", "a {c} {s} {p}"),
        "there is " + join(" and ", "a {z} {c} {s} {side}"),
        "the picture shows " + join(" and ", "a {c} {s} {p}"),
        f"{kinds}: " + join(" and ", "a {z} {c} {s} {p}") if two else join("", "a {z} {c} {s} is {p}"),
        join(" and ", "{p} is a {z} {c} {s}", fields[::-1]),
    ]
    return [re.sub(r"\ba (?=[aeiou])", "an ", c) for c in captions]


def choose_questions(scene, rng):
    """Pick QUESTIONS_PER_IMAGE language-neutral questions: (kind, target) with kind colour/shape/count/position.

    The target is an object index, or a shape key for count questions. Only questions with one right answer are
    asked (no position question about one of two identical objects).
    """
    candidates = {
        "colour": list(range(len(scene))),
        "shape": list(range(len(scene))),
        "position": [i for i, o in enumerate(scene)
                     if sum((p.colour, p.shape) == (o.colour, o.shape) for p in scene) == 1],
    }
    present = sorted({o.shape for o in scene}, key=SHAPES.index)
    absent = [s for s in SHAPES if s not in present]
    questions = []
    for kind in rng.permutation(["colour", "shape", "count", "position"]):
        if len(questions) == QUESTIONS_PER_IMAGE:
            break
        if kind == "count":
            pool = absent if absent and rng.random() < ZERO_COUNT_SHARE else present
            questions.append(("count", str(rng.choice(pool))))
        elif candidates[kind]:
            questions.append((str(kind), int(rng.choice(candidates[kind]))))
    return questions


def render_question(scene, question, lang):
    """The (question text, answer text) of a question from `choose_questions` in the given language."""
    kind, target = question
    w = WORDS[lang]
    if kind == "count":
        count = str(sum(o.shape == target for o in scene))
        if lang == "zh":
            return f"图中有几个{w['shape'][target]}？", count
        return f"how many {w['plural'][target]} are there?", count
    o = scene[target]
    colour, shape, where = w["colour"][o.colour], w["shape"][o.shape], w["position"][o.position]
    shared_shape = sum(p.shape == o.shape for p in scene) > 1
    if lang == "zh":
        texts = {"colour": (f"{where}的{shape}是什么颜色？" if shared_shape else f"图中的{shape}是什么颜色？", colour),
                 "shape": (f"{where}是什么形状？", shape),
                 "position": (f"{colour}的{shape}在哪里？", where)}
    else:
        texts = {"colour": (f"what colour is the {shape} {w['where'][o.position]}?" if shared_shape
                            else f"what colour is the {shape}?", colour),
                 "shape": (f"what shape is {w['where'][o.position]}?", shape),
                 "position": (f"where is the {colour} {shape}?", where)}
    return texts[kind]


# ---------------------------------------------------------------------------------------------------------- image
def place_objects(scene, image_size, rng):
    """Jittered pixel centres, radii and colours of a scene's objects: a list of dicts."""
    placed = []
    for o in scene:
        x = X_CENTRE[o.position] + rng.uniform(-JITTER_X, JITTER_X)
        y = 0.5 + rng.uniform(-JITTER_Y, JITTER_Y)
        rgb = [int(np.clip(v + rng.integers(-10, 11), 0, 255)) for v in COLOUR_RGB[o.colour]]
        placed.append({"x": round(x * image_size, 3), "y": round(y * image_size, 3),
                       "radius": round(RADIUS[o.size] * image_size, 3), "rgb": rgb})
    return placed


def light_background(rng):
    """A plain, light, slightly tinted background colour."""
    base = int(rng.integers(228, 248))
    return [int(np.clip(base + rng.integers(-8, 9), 0, 255)) for _ in range(3)]


def render_scene(scene, placed, background, image_size):
    """Draw the scene (supersampled, then downscaled for smooth edges) and return an RGB PIL image."""
    big = image_size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), tuple(background))
    draw = ImageDraw.Draw(image)
    for o, p in zip(scene, placed):
        x, y, r, fill = p["x"] * SUPERSAMPLE, p["y"] * SUPERSAMPLE, p["radius"] * SUPERSAMPLE, tuple(p["rgb"])
        if o.shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif o.shape == "square":
            h = 0.85 * r
            draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
        else:
            draw.polygon([(x, y - r), (x - r, y + 0.8 * r), (x + r, y + 0.8 * r)], fill=fill)
    return image.resize((image_size, image_size), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------------------------------------------------- audio
def caption_tokens(text):
    """The spoken units of a caption: each CJK character and each latin word or number; punctuation is dropped."""
    return re.findall(r"[\u3400-\u9fff]|[A-Za-z0-9]+", text)


def token_frequencies(token):
    """Two partial frequencies (Hz) for a token, from a stable hash of its UTF-8 bytes."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    span = TONE_MAX_HZ - TONE_MIN_HZ + 1
    return [TONE_MIN_HZ + int.from_bytes(digest[k:k + 4], "little") % span for k in (0, 4)]


def tone_audio(text):
    """Render a caption as a tone sequence: one faded two-partial tone plus a gap per token; int16 at 16 kHz."""
    n_tone, n_fade = SAMPLE_RATE * TONE_MS // 1000, SAMPLE_RATE * FADE_MS // 1000
    t = np.arange(n_tone) / SAMPLE_RATE
    envelope = np.ones(n_tone)
    envelope[:n_fade] = np.linspace(0.0, 1.0, n_fade)
    envelope[-n_fade:] = np.linspace(1.0, 0.0, n_fade)
    gap = np.zeros(SAMPLE_RATE * GAP_MS // 1000)
    pieces = []
    for token in caption_tokens(text):
        wave_ = sum(np.sin(2 * np.pi * f * t) for f in token_frequencies(token)) * TONE_AMPLITUDE * envelope
        pieces += [wave_, gap]
    signal = np.concatenate(pieces) if pieces else np.zeros(0)
    return np.round(signal * 32767).astype(np.int16)


def speech_audio(text):
    """Synthesise Mandarin speech with espeak-ng and resample it to int16 at 16 kHz."""
    from src.data.transforms import read_wav, resample  # imports MindSpore, so only on this optional path
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        done = subprocess.run(["espeak-ng", "-v", ESPEAK_VOICE, "-w", str(path), text],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise UserError(f"espeak-ng failed on {text!r}: {done.stderr.strip()}; rerun with --audio tones")
        samples, rate = read_wav(path)
    return np.round(np.clip(resample(samples, rate, SAMPLE_RATE), -1.0, 1.0) * 32767).astype(np.int16)


def write_wav(path, samples):
    """Write int16 samples as a 16 kHz mono 16-bit WAV file."""
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(samples.astype("<i2").tobytes())


def resolve_audio_mode(audio):
    """Map the requested audio mode (auto/tones/speech) to the one used, checking that espeak-ng exists."""
    if audio not in ("auto", "tones", "speech"):
        raise UserError(f"--audio must be auto, tones or speech, got {audio!r}")
    has_espeak = shutil.which("espeak-ng") is not None
    if audio == "speech" and not has_espeak:
        raise UserError("--audio speech needs espeak-ng on PATH; install it or use --audio tones")
    if audio == "auto":
        return "speech" if has_espeak else "tones"
    return audio


# ----------------------------------------------------------------------------------------------------- planning
def _allocate(n_scenes, demands):
    """Split n_scenes distinct scenes between splits in proportion to their image demands (>=1 each if needed)."""
    total = sum(demands)
    counts = [0 if d == 0 else min(d, max(1, n_scenes * d // total)) for d in demands]
    while sum(counts) > n_scenes:
        counts[counts.index(max(counts))] -= 1
    return counts


def plan_samples(sizes, image_size, seed):
    """Decide every sample (scene, layout, captions, questions) before any rendering; deterministic in `seed`.

    Scenes are drawn per split from disjoint pools of scene specs, cycling through each pool so a split repeats a
    spec (with a different layout) only once it has used all of its own.
    """
    rng = np.random.default_rng(seed)
    strata = [[stratum[i] for i in rng.permutation(len(stratum))] for stratum in all_scenes()]
    n_single = {split: round(sizes[split] * SINGLE_OBJECT_SHARE) for split in SPLITS}
    demands = [[n_single[s] for s in SPLITS], [sizes[s] - n_single[s] for s in SPLITS]]
    pools = {split: [] for split in SPLITS}
    for stratum, demand in zip(strata, demands):
        start = 0
        for split, count in zip(SPLITS, _allocate(len(stratum), demand)):
            pools[split].append(stratum[start:start + count])
            start += count

    samples = []
    for split in SPLITS:
        split_rng = np.random.default_rng([seed, SPLIT_INDEX[split]])
        is_single = np.zeros(sizes[split], dtype=bool)
        is_single[split_rng.permutation(sizes[split])[:n_single[split]]] = True
        used = [0, 0]
        for i in range(sizes[split]):
            stratum = 0 if is_single[i] else 1
            pool = pools[split][stratum]
            scene = pool[used[stratum] % len(pool)]
            used[stratum] += 1
            rng_i = np.random.default_rng([seed, SPLIT_INDEX[split], i])
            samples.append(_plan_sample(split, i, scene, image_size, rng_i))
    return samples


def _plan_sample(split, index, scene, image_size, rng):
    """One sample's full description as a dict (everything needed to render and to write manifests)."""
    order = rng.permutation(CAPTIONS_PER_IMAGE)
    phrasings = {lang: describe_scene(scene, lang) for lang in LANGS}
    captions = {lang: [phrasings[lang][k] for k in order] for lang in LANGS}
    questions = choose_questions(scene, rng)
    return {
        "id": f"{split}_{index:06d}",
        "split": split,
        "scene": scene,
        "placed": place_objects(scene, image_size, rng),
        "background": light_background(rng),
        "captions": captions,
        "qa": {lang: [render_question(scene, q, lang) for q in questions] for lang in LANGS},
    }


# ---------------------------------------------------------------------------------------------------- rendering
def _render_job(job):
    """Worker: write one sample's JPEG and WAV (arguments packed in a tuple for Pool.imap)."""
    sample, out_dir, image_size, audio_mode = job
    image = render_scene(sample["scene"], sample["placed"], sample["background"], image_size)
    image.save(Path(out_dir) / "images" / f"{sample['id']}.jpg", quality=JPEG_QUALITY)
    spoken = sample["captions"]["zh"][0]
    samples = tone_audio(spoken) if audio_mode == "tones" else speech_audio(spoken)
    write_wav(Path(out_dir) / "audio" / f"{sample['id']}.wav", samples)


def _render_all(samples, out_dir, image_size, audio_mode, workers):
    jobs = [(s, str(out_dir), image_size, audio_mode) for s in samples]
    bar = tqdm(total=len(jobs), desc="demo data", unit="img", disable=None)
    if workers > 1 and len(jobs) >= POOL_THRESHOLD:
        # spawn, not fork: the caller may already run MindSpore threads, which a forked child must not inherit
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_render_job, jobs, chunksize=32):
                bar.update()
    else:
        for job in jobs:
            _render_job(job)
            bar.update()
    bar.close()


# ------------------------------------------------------------------------------------------------------- output
def _manifest_files():
    """Every manifest file name the generator writes."""
    names = ["scenes.jsonl"]
    for split in SPLITS:
        names += [f"{split}.jsonl", f"{split}_en.jsonl", f"{split}_vqa.jsonl", f"{split}_vqa_en.jsonl"]
    return names


def _prepare_out_dir(out_dir):
    """Create out_dir, or clear the files of an earlier demo there; refuse to touch any other non-empty folder."""
    meta_path = out_dir / "meta.json"
    if out_dir.exists() and any(out_dir.iterdir()):
        try:
            earlier = json.loads(meta_path.read_text(encoding="utf-8")).get("generator")
        except (OSError, ValueError):
            earlier = None
        if earlier not in (GENERATOR_NAME, *EARLIER_GENERATOR_NAMES):
            raise UserError(f"{out_dir} is not empty and holds no demo dataset; choose an empty or new --out")
        for sub in ("images", "audio"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
        for name in _manifest_files() + ["meta.json", "README.txt"]:
            (out_dir / name).unlink(missing_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "audio").mkdir(exist_ok=True)


def _write_manifests(out_dir, samples):
    for split in SPLITS:
        rows = [s for s in samples if s["split"] == split]
        for lang, suffix in (("zh", ""), ("en", "_en")):
            captions = []
            vqa = []
            for s in rows:
                image = f"images/{s['id']}.jpg"
                line = {"id": s["id"], "image": image, "captions": s["captions"][lang]}
                if lang == "zh":
                    line["audio"] = f"audio/{s['id']}.wav"
                captions.append({**line, "lang": lang})
                rationale = describe_scene(s["scene"], lang)[0]
                vqa += [{"id": f"{s['id']}_q{k}", "image_id": s["id"], "image": image, "question": q,
                         "answers": [a], "rationales": [rationale], "lang": lang}
                        for k, (q, a) in enumerate(s["qa"][lang])]
            write_jsonl(out_dir / f"{split}{suffix}.jsonl", captions)
            write_jsonl(out_dir / f"{split}_vqa{suffix}.jsonl", vqa)
    write_jsonl(out_dir / "scenes.jsonl", [
        {"id": s["id"], "split": s["split"], "spec_hash": scene_hash(s["scene"]), "background": s["background"],
         "objects": [{**dict(zip(("colour", "shape", "size", "position"), spec)), **placed}
                     for spec, placed in zip(scene_spec(s["scene"]), s["placed"])]}
        for s in samples])


def _meta(samples, sizes, image_size, seed, audio, audio_mode):
    splits = {}
    for split in SPLITS:
        rows = [s for s in samples if s["split"] == split]
        splits[split] = {"images": len(rows), "vqa_questions": sum(len(s["qa"]["zh"]) for s in rows),
                         "single_object_images": sum(len(s["scene"]) == 1 for s in rows),
                         "distinct_scenes": len({scene_hash(s["scene"]) for s in rows})}
    vocab = {name: {key: {lang: WORDS[lang][name][key] for lang in LANGS} for key in keys}
             for name, keys in (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES), ("position", POSITIONS))}
    return {
        "generator": GENERATOR_NAME, "seed": seed, "image_size": image_size, "requested_sizes": sizes,
        "splits": splits, "captions_per_image": CAPTIONS_PER_IMAGE, "questions_per_image": QUESTIONS_PER_IMAGE,
        "audio": {"requested": audio, "mode": audio_mode, "sample_rate": SAMPLE_RATE, "channels": 1, "bits": 16,
                  "content": "first Chinese caption of the image",
                  **({"tone_ms": TONE_MS, "gap_ms": GAP_MS, "fade_ms": FADE_MS} if audio_mode == "tones"
                     else {"espeak_voice": ESPEAK_VOICE})},
        "vocab": vocab, "colour_rgb": {c: list(v) for c, v in COLOUR_RGB.items()},
        "files": {"images": "images/<id>.jpg", "audio": "audio/<id>.wav", "manifests": _manifest_files()},
    }


def _readme(meta):
    audio = meta["audio"]
    if audio["mode"] == "tones":
        how = (f"tone sequence: each CJK character or latin word of the caption is a {audio['tone_ms']} ms tone "
               f"made of two sine partials (frequencies from a stable hash of the token, "
               f"{TONE_MIN_HZ}-{TONE_MAX_HZ} Hz) followed by {audio['gap_ms']} ms of silence")
    else:
        how = f"speech synthesised by espeak-ng (voice {audio['espeak_voice']}), resampled to 16 kHz"
    counts = ", ".join(f"{split} {meta['splits'][split]['images']}" for split in SPLITS)
    return f"""OPT demo dataset (synthetic), generated by `python -m {GENERATOR_NAME}` with seed {meta['seed']}.

Images ({counts}): {meta['image_size']}x{meta['image_size']} JPEG scenes of one or two coloured shapes
(colours {', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; sizes big/small; position left/middle/right).
Scene specs never repeat across splits, so validation and test scenes are unseen in training.

Files
  images/<id>.jpg                  rendered scenes
  audio/<id>.wav                   16 kHz mono 16-bit audio of the image's first Chinese caption
  <split>.jsonl                    id, image, captions (5 Chinese phrasings), audio, lang "zh"
  <split>_en.jsonl                 id, image, captions (5 English phrasings), lang "en"
  <split>_vqa.jsonl                one question per line: id, image_id, image, question, answers, rationales
                                   (the scene in the first caption phrasing, what the answer rests on), lang "zh"
  <split>_vqa_en.jsonl             the same questions in English
  scenes.jsonl                     scene spec, spec hash and pixel layout of every image
  meta.json                        counts, seed, sizes, audio mode, attribute vocabularies

Audio mode: {audio['mode']} ({how}).
Paths inside the manifests are relative to this folder.
"""


def generate_demo(out_dir, n_train, n_val, n_test, image_size=64, seed=0, audio="auto", workers=2):
    """Generate the demo dataset under out_dir and return its meta dict (also written to meta.json)."""
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    if n_train < 1 or n_val < 0 or n_test < 0:
        raise UserError(f"--n_train must be >= 1 and --n_val/--n_test >= 0, got {sizes}")
    if image_size < 32:
        raise UserError(f"--image_size must be >= 32 so the shapes stay visible, got {image_size}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    audio_mode = resolve_audio_mode(audio)
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir)
    samples = plan_samples(sizes, image_size, seed)
    _render_all(samples, out_dir, image_size, audio_mode, workers)
    _write_manifests(out_dir, samples)
    meta = _meta(samples, sizes, image_size, seed, audio, audio_mode)
    (out_dir / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out_dir / "README.txt").write_text(_readme(meta), encoding="utf-8")
    return meta


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m demo.data", description="Generate the synthetic OPT demo "
                                     "dataset (images, captions, audio, VQA).")
    parser.add_argument("--out", default="data/demo", help="output folder (new, empty, or an earlier demo)")
    parser.add_argument("--n_train", type=int, default=2000)
    parser.add_argument("--n_val", type=int, default=200)
    parser.add_argument("--n_test", type=int, default=200)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--audio", default="auto", choices=["auto", "tones", "speech"],
                        help="tones: deterministic tone sequences; speech: espeak-ng; auto: speech if available")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    args = parser.parse_args(argv)
    try:
        meta = generate_demo(args.out, args.n_train, args.n_val, args.n_test, image_size=args.image_size,
                             seed=args.seed, audio=args.audio, workers=args.workers)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{split} {meta['splits'][split]['images']}" for split in SPLITS)
    print(f"wrote {counts} images to {args.out} (audio: {meta['audio']['mode']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
