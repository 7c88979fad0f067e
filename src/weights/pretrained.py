"""Start OPT from public pre-trained encoders (docs/pretrained_encoders.md).

    checkpoint.init_text:   a BERT-layout model.safetensors   -> text_encoder                       (bert.py)
    checkpoint.init_image:  a HuggingFace or timm ViT file     -> image_encoder                      (vit.py)
    checkpoint.init_towers: a HuggingFace ChineseCLIPModel     -> both towers, projections, scale    (cnclip.py)

`init_from_pretrained(model, cfg)` reads the files named there (each checked against the config first: width,
layers, vocabulary, the math options), writes every mapped value into the model, and returns one LoadReport naming
every key mapped, reshaped, sliced, interpolated, merged or dropped and every parameter of ours left at its
initialisation. The trainer calls it at initialisation (not on resume) and writes the report to
<run.output_dir>/load_report.{json,md}; scripts/import_pretrained.py does the same into a checkpoint for eval.py.
"""
import os

from src.data.vocab import read_vocab
from src.errors import UserError
from src.weights.bert import map_bert_file
from src.weights.cnclip import map_chinese_clip_file
from src.weights.foreign import WeightImport, apply_imports
from src.weights.report import LoadReport
from src.weights.vit import map_vit_file

KEYS = ("init_towers", "init_text", "init_image")
LAYOUTS = {"init_towers": "Chinese-CLIP", "init_text": "BERT", "init_image": "ViT"}


def pretrained_sources(ckpt_cfg):
    """[(config key, path)] of the pre-trained files a config names, checked for clashes."""
    sources = [(key, ckpt_cfg[key]) for key in KEYS if ckpt_cfg[key]]
    if ckpt_cfg.init_towers and (ckpt_cfg.init_text or ckpt_cfg.init_image):
        raise UserError("checkpoint.init_towers (a Chinese-CLIP file) already sets both towers; leave "
                        "checkpoint.init_text and checkpoint.init_image null, or drop init_towers")
    if sources and ckpt_cfg.init:
        raise UserError(f"checkpoint.init ({ckpt_cfg.init}) and checkpoint.{sources[0][0]} are both set; an OPT "
                        f"checkpoint already holds the encoders: keep one of them")
    return sources


def check_vocab(weights_path, rows, init_vocab, data_vocab):
    """The tokenizer's vocabulary (data.vocab) must be the one the text weights were trained with: same size as the
    word-embedding rows, and the same tokens line by line as `init_vocab` or the vocab.txt beside the weights."""
    tokens = read_vocab(data_vocab)
    if len(tokens) != rows:
        raise UserError(f"data.vocab {data_vocab} has {len(tokens)} tokens but the text weights {weights_path} have "
                        f"{rows} word-embedding rows; use the vocab.txt the weights were trained with as data.vocab")
    reference = init_vocab or os.path.join(os.path.dirname(os.path.abspath(weights_path)), "vocab.txt")
    if not init_vocab and not os.path.isfile(reference):
        return None
    theirs = read_vocab(reference)
    for line, (ours, their) in enumerate(zip(tokens, theirs), start=1):
        if ours != their:
            raise UserError(f"data.vocab {data_vocab} line {line} is {ours!r} but the weights' vocabulary "
                            f"{reference} has {their!r}; use {reference} as data.vocab")
    if len(theirs) != len(tokens):
        raise UserError(f"data.vocab {data_vocab} has {len(tokens)} tokens but the weights' vocabulary {reference} "
                        f"has {len(theirs)}; use {reference} as data.vocab")
    return reference


def init_from_pretrained(model, cfg):
    """Load the files of cfg.checkpoint.init_text / init_image / init_towers into `model` (an OPTModel built from
    cfg.model with the vocabulary resolved); returns the LoadReport, or None when the config names none."""
    ckpt = cfg.checkpoint
    sources = pretrained_sources(ckpt)
    if not sources:
        return None
    model_cfg = model.cfg
    report = LoadReport("; ".join(f"checkpoint.{key}={path}" for key, path in sources))
    params = dict(model.parameters_dict())
    values = {}
    for key, path in sources:
        imp = WeightImport(path, LAYOUTS[key], params, report, values)
        if key == "init_towers":
            map_chinese_clip_file(imp, model_cfg, ckpt.position_interpolation)
        elif key == "init_text":
            map_bert_file(imp, model_cfg)
        else:
            map_vit_file(imp, model_cfg, ckpt.position_interpolation)
        imp.finish()
        if key in ("init_towers", "init_text"):
            rows = values["text_encoder.word_embeddings.embedding_table"].shape[0]
            check_vocab(path, rows, ckpt.init_vocab, cfg.data.vocab)
    return apply_imports(model, params, values, report)
