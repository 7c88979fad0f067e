"""The recipes of docs/recipes.md: every recipe config resolves with its model; every `# prepare: NAME` block of the
page runs, as written, on a few samples written in its dataset's published layout, builds with --strict the
MindRecords its recipes name, and each recipe trains one step on them (its config with the tiny model's sizes).

The samples follow the dataset owners' layouts: Chinese-CLIP's Flickr30k-CN TSV + JSONL, COCO-CN's split lists and
`imageid.human-written-caption.txt`, AI Challenger's annotation JSON lists, the original OPT's FM-IQA.json and text
databases, VQA v2's questions / annotations JSON, and COCO's image file names.
"""
import hashlib
import io
import json
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from src.config import load_config
from tests.helpers import ROOT
from tests.integration.conftest import subprocess_env
from tests.unit.test_converters import VOCAB, write_json, write_text

DOC = os.path.join(ROOT, "docs", "recipes.md")

# recipe config -> (preparation block of docs/recipes.md, training entry point)
RECIPES = {
    "config/retrieval/flickr30k_cn.yaml": ("flickr30k_cn", "train_retrieval"),
    "config/retrieval/coco_cn.yaml": ("coco_cn", "train_retrieval"),
    "config/caption/coco_cn.yaml": ("coco_cn", "train_caption"),
    "config/caption/aic.yaml": ("aic", "train_caption"),
    "config/vqa/fmiqa.yaml": ("fmiqa", "train_vqa"),
    "config/vqa/vqa2.yaml": ("vqa2", "train_vqa"),
    "config/pretrain/opt_1b_cc3m_coco_aic.yaml": ("pretrain", "train_pretrain"),
}
# evaluated after the step: one recipe per evaluation path (coco_cn retrieval and aic captioning share theirs)
EVALUATED = ("config/retrieval/flickr30k_cn.yaml", "config/caption/coco_cn.yaml", "config/vqa/fmiqa.yaml",
             "config/vqa/vqa2.yaml")
ZH = "一只猫狗在跑红色的小白草地上有两个人哪几什么图里吗"
EN = ["what", "color", "is", "the", "cat", "how", "many", "dogs", "red", "two", "yes", "no", "?"]
CAPTIONS = ["一只猫在跑", "一只狗在草地上", "两个人在跑", "红色的小狗", "白色的猫在草地上"]


def prepare_blocks():
    """{name: bash text} of the ```bash blocks whose first line is `# prepare: NAME`, in page order."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    return dict(re.findall(r"```bash\n# prepare: (\w+)\n(.*?)```", text, flags=re.S))


def jpeg(path, seed, size=(48, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256)).save(path, "JPEG")
    return path


def jpeg_base64(seed):
    import base64
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), ((seed * 41) % 256, 90, 160)).save(buffer, "JPEG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def coco_name(subtype, n):
    return f"COCO_{subtype}_{n:012d}"


def write_flickr30k_cn(raw):
    """Chinese-CLIP's Flickr30k-CN: {split}_imgs.tsv (image_id<TAB>base64) and {split}_texts.jsonl."""
    for s, split in enumerate(("train", "valid", "test")):
        ids = [1000 * (s + 1) + k for k in range(4)]
        write_text(raw / "Flickr30k-CN" / f"{split}_imgs.tsv", [f"{i}\t{jpeg_base64(i)}" for i in ids])
        texts = [{"text_id": 10 * i + k, "text": CAPTIONS[(i + k) % 5], "image_ids": [i]} for i in ids for k in (0, 1)]
        write_text(raw / "Flickr30k-CN" / f"{split}_texts.jsonl", [json.dumps(t, ensure_ascii=False) for t in texts])


def write_coco_images(raw):
    """COCO 2014 images, by their published file names (shared by COCO-CN, FM-IQA and VQA v2)."""
    for subtype in ("train2014", "val2014"):
        for n in range(1, 9):
            jpeg(raw / "coco" / subtype / f"{coco_name(subtype, n)}.jpg", n + (10 if subtype == "val2014" else 0))


def write_coco_cn(raw):
    """COCO-CN: split lists of image ids, captions as `image_id#k<TAB>caption` for all splits."""
    folder = raw / "coco-cn-version1805v1.1"
    splits = {"train": [coco_name("train2014", n) for n in range(1, 5)] + [coco_name("val2014", 1)],
              "val": [coco_name("val2014", n) for n in (2, 3, 4)], "test": [coco_name("val2014", n) for n in (5, 6, 7)]}
    for split, names in splits.items():
        write_text(folder / f"coco-cn_{split}.txt", names)
    lines = [f"{name}#{k}\t{CAPTIONS[(i + k) % 5]}" for i, name in enumerate(sum(splits.values(), []))
             for k in range(1 + i % 2)]
    write_text(folder / "imageid.human-written-caption.txt", lines)


def write_aic(raw):
    """AI Challenger 2017 captions: a JSON list of {url, image_id: "<sha1>.jpg", caption: [5 captions]}."""
    for split, date, count in (("train", "20170902", 5), ("validation", "20170910", 4)):
        folder = raw / f"ai_challenger_caption_{split}_{date}"
        items = []
        for k in range(count):
            name = hashlib.sha1(f"{split}{k}".encode()).hexdigest() + ".jpg"
            jpeg(folder / f"caption_{split}_images_{date}" / name, k + 20)
            captions = [CAPTIONS[(k + j) % 5] for j in range(5)]
            captions[1] = "\n" + captions[1] + "\n"      # line breaks inside captions occur in the published files
            items.append({"url": f"http://img.example.com/{name}", "image_id": name, "caption": captions})
        write_json(folder / f"caption_{split}_annotations_{date}.json", items)


def write_fmiqa(raw):
    """The original OPT's FM-IQA.json: {"train": [...], "val": [...]} of {question_id, image_id, Question, Answer}."""
    train = [{"question_id": q, "image_id": 1 + q % 4, "Question": "图里有什么？", "Answer": CAPTIONS[q % 5]}
             for q in range(5)]
    val = [{"question_id": 100 + q, "image_id": 1 + q, "Question": "猫在哪？", "Answer": "在草地上"} for q in range(3)]
    write_json(raw / "FM-IQA.json", {"train": train, "val": val})


def write_vqa2(raw):
    """VQA v2: v2_OpenEnded_mscoco_<subtype>_questions.json and v2_mscoco_<subtype>_annotations.json."""
    for subtype in ("train2014", "val2014"):
        questions, annotations = [], []
        for q in range(5):
            image_id, question_id = 1 + q % 4, 1000 * (1 + q % 4) + q
            questions.append({"image_id": image_id, "question": "what color is the cat?", "question_id": question_id})
            answers = [{"answer": "red" if j % 3 else "two", "answer_confidence": "yes", "answer_id": j + 1}
                       for j in range(10)]
            annotations.append({"question_type": "what color is the", "multiple_choice_answer": "red",
                                "answers": answers, "image_id": image_id, "answer_type": "other",
                                "question_id": question_id})
        write_json(raw / "vqa2" / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
                   {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
                    "data_subtype": subtype, "questions": questions})
        write_json(raw / "vqa2" / f"v2_mscoco_{subtype}_annotations.json",
                   {"info": {}, "license": {}, "data_subtype": subtype, "annotations": annotations})


def write_opt_pretrain(raw):
    """The original's text databases: <db>/meta.json, <db>/<id>.json with bert token ids, a JSON id list, images.
    cc3m ids are their image's own relative name; COCO ids `<name>.jpg<k>` are caption k of image <name>.jpg."""
    ids = {VOCAB[i]: i for i in range(len(VOCAB))}
    encode = [[ids[c] for c in text] for text in ("一只猫在跑", "一只狗", "猫在跑")]
    meta = {"CLS": 2, "SEP": 3, "MASK": 4, "v_range": [5, len(VOCAB)]}
    db = raw / "opt_pretrain"
    write_json(db / "cc3m" / "txt" / "meta.json", meta)
    cc3m = [f"cc3m/training/{1000001 + k}_{k % 2}" for k in range(3)] + ["cc3m/training/1000009_0"]  # dead link
    for k, name in enumerate(cc3m):
        write_json(db / "cc3m" / "txt" / f"{name}.json", {"input_ids": encode[k % 3]})
        if k < 3:
            jpeg(db / "cc3m" / "img" / name, 30 + k)
    write_json(db / "cc3m" / "ids.json", cc3m)
    write_json(db / "coco" / "txt" / "meta.json", meta)
    coco = []
    for n in (1, 2):
        name = f"{coco_name('train2014', n)}.jpg"
        jpeg(db / "coco" / "img" / name, 40 + n)
        for k in range(2):
            write_json(db / "coco" / "txt" / f"{name}{k}.json", {"input_ids": encode[(n + k) % 3]})
            coco.append(f"{name}{k}")
    write_json(db / "coco" / "ids.json", coco)


def tiny_vocab(path):
    """A small stand-in for bert-base-chinese at the path the recipes name; the specials sit where the text-db
    sample's meta.json says (CLS 2, SEP 3, MASK 4)."""
    words = VOCAB + [c for c in dict.fromkeys(ZH + "？，。") if c not in VOCAB] + EN
    return write_text(path, words)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A working folder laid out as docs/recipes.md assumes (raw/, vocab/), after running every prepare block."""
    ws = tmp_path_factory.mktemp("recipes")
    raw = ws / "raw"
    for write in (write_flickr30k_cn, write_coco_images, write_coco_cn, write_aic, write_fmiqa, write_vqa2,
                  write_opt_pretrain):
        write(raw)
    tiny_vocab(ws / "vocab" / "bert-base-chinese.txt")
    env = subprocess_env()
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    results = {}
    for name, block in prepare_blocks().items():
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ws, env=env, capture_output=True,
                              text=True, timeout=900)
        results[name] = done
    return ws, results


def test_every_recipe_resolves_with_its_model():
    blocks = prepare_blocks()
    for recipe, (block, _) in RECIPES.items():
        cfg = load_config(os.path.join(ROOT, recipe))
        assert cfg.model.name in ("opt_1b", "opt_1b_released"), recipe
        assert cfg.data.vocab == "vocab/bert-base-chinese.txt" and cfg.data.train.startswith("data/"), recipe
        assert block in blocks, f"docs/recipes.md has no '# prepare: {block}' block for {recipe}"
        with open(DOC, encoding="utf-8") as f:
            assert recipe in f.read(), f"docs/recipes.md does not name {recipe}"
    medium = load_config(os.path.join(ROOT, "config", "model", "medium.yaml")).model
    assert (medium.image.image_size, medium.image.patch_size, medium.cross.hidden) == (224, 16, 512)


@pytest.mark.slow
@pytest.mark.parametrize("block", sorted(set(b for b, _ in RECIPES.values())))
def test_prepare_block_builds_the_recipes_mindrecords(workspace, block):
    ws, results = workspace
    done = results[block]
    assert done.returncode == 0, f"# prepare: {block} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for recipe, (name, _) in RECIPES.items():
        if name != block:
            continue
        cfg = load_config(os.path.join(ROOT, recipe))
        for split in ("train", "val", "test"):
            path = cfg.data[split]
            if path:
                meta = ws / f"{path}.meta.json"
                assert meta.is_file(), f"{recipe}: data.{split} = {path} is not built by '# prepare: {block}'"
                assert json.loads(meta.read_text(encoding="utf-8"))["count"] > 0
                report = json.loads((ws / f"{path}.report.json").read_text(encoding="utf-8"))
                assert report["texts"]["unk_tokens"] == 0, (recipe, split, report["texts"])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_trains_one_step_on_its_prepared_data(workspace, recipe, tmp_path):
    ws, results = workspace
    block, entry = RECIPES[recipe]
    assert results[block].returncode == 0, results[block].stderr[-3000:]
    cfg = load_config(os.path.join(ROOT, recipe))
    run = tmp_path / "run"
    config = tmp_path / "recipe_tiny.yaml"
    # the recipe's run settings with the tiny model's sizes, one step in PyNative, no init checkpoint, no evaluation
    config.write_text(json.dumps({
        "base": [os.path.join(ROOT, recipe), os.path.join(ROOT, "config", "model", "tiny.yaml")],
        "model": {"compute_dtype": "float32", "text": {"vocab_size": 0, "max_len": 16},
                  "text_decoder": {"max_len": 16}},
        "run": {"output_dir": str(run), "mode": "pynative", "compile_cache": False, "log_every": 1},
        "data": {"train": str(ws / cfg.data.train), "val": "", "test": "",
                 "vocab": str(ws / cfg.data.vocab), "workers": 1},
        "train": {"batch_size": 3, "steps": 1, "eval_every": 0, "loss_scale": "none"},
        "checkpoint": {"init": None, "resume": None, "every": 1},
        "parallel": {"optimizer_shard": False, "recompute": False},
        "caption": {"max_len": 8}, "vqa": {"max_len": 8},
    }), encoding="utf-8")
    module = __import__(entry)
    assert module.main(["--config", str(config)]) == 0
    with open(run / "metrics.jsonl", encoding="utf-8") as f:
        steps = [json.loads(line) for line in f if '"step"' in line]
    assert steps and steps[-1]["step"] == 1
    if recipe not in EVALUATED:
        return
    # the recipe's evaluation on its test MindRecord, as docs/recipes.md runs it (retrieval: the zero-shot itm form)
    import eval as eval_cli
    ckpt = sorted((run / "checkpoints").glob("step_*"))[-1]
    task = entry.split("_")[1]
    test = str(ws / cfg.data.test)
    argv = ["--task", task, "--ckpt", str(ckpt), "--config", str(config), "--set", f"data.test={test}"]
    argv += ["--data", test, "--mode", "itm", "--out", str(tmp_path / "eval")] if task == "retrieval" else \
        ["--split", "test", "--out_dir", str(tmp_path / "eval"), "--batch_size", "2"]
    assert eval_cli.main(argv) == 0
    assert any((tmp_path / "eval").glob("*.json"))
