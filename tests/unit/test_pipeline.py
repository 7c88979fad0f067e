"""Per-task pretraining pipelines and the evaluation pipeline over MindRecord: columns, values, sharding, resume."""
import glob
import json
import os
import shutil

import numpy as np
import pytest

from src.data.build_mindrecord import build_mindrecord, vocab_sha256
from demo.data import generate_demo
from src.data.manifest import read_manifest
from src.data.labels import (ITM_AUDIO_SWAPPED, ITM_BOTH_DIFFERENT, ITM_IMAGE_SWAPPED, ITM_MATCHED, ITM_SAME_OTHER,
                             IMAGE_BOS_ID, IMAGE_EOS_ID)
from src.data.masking import mask_tokens, sample_rng
from src.data.pretrain_data import (PRETRAIN_TASKS, build_eval_dataset, build_pretrain_dataset, epoch_indices,
                                    open_mindrecord, read_references, task_columns, task_requirements)
from src.data.finetune_data import build_caption_dataset
from src.data.tokenizer import Tokenizer, tokenizer_fingerprint
from src.data.vocab import build_vocab, manifest_texts, write_vocab
from src.errors import UserError
from tests.helpers import half_audio_manifest, model_config

SEED, B = 7, 4
N_TRAIN, N_VAL = 24, 7
COMMON = ["text_ids", "text_mask", "image", "audio", "frame_mask"]
COLUMNS = {
    "mlm": COMMON + ["mlm_positions", "mlm_labels", "mlm_weights"],
    "mvm": COMMON + ["image_masked"],
    "mam": COMMON + ["audio_masked"],
    "itm": COMMON + ["itm_labels", "itm_image_src", "itm_audio_src"],
    "itc": COMMON,
    "td": COMMON + ["image_masked", "audio_masked", "dec_input", "dec_target", "dec_weights"],
    "id": COMMON + ["image_masked", "img_dec_input", "img_dec_target", "img_dec_weights"],
}
# The tiny model: text 12, image 32 with patch 8 (16 patches), 32 mel frames of 80 bins subsampled by 4 (8 tokens),
# 8 MLM predictions, text decoder 12, image decoder 17 with a codebook of 16.
SHAPES = {
    "text_ids": ((B, 12), "int32"), "text_mask": ((B, 12), "int32"), "image": ((B, 3, 32, 32), "float32"),
    "audio": ((B, 32, 80), "float32"), "frame_mask": ((B, 32), "int32"),
    "mlm_positions": ((B, 8), "int32"), "mlm_labels": ((B, 8), "int32"), "mlm_weights": ((B, 8), "float32"),
    "image_masked": ((B, 16), "float32"), "audio_masked": ((B, 8), "float32"), "itm_labels": ((B,), "int32"),
    "itm_image_src": ((B,), "int32"), "itm_audio_src": ((B,), "int32"),
    "dec_input": ((B, 12), "int32"), "dec_target": ((B, 12), "int32"), "dec_weights": ((B, 12), "float32"),
    "img_dec_input": ((B, 17), "int32"), "img_dec_target": ((B, 17), "int32"), "img_dec_weights": ((B, 17), "float32"),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Demo train (with a 4x4 grid of image tokens per sample), val and val VQA MindRecords, tokenizer and config."""
    root = tmp_path_factory.mktemp("pipeline")
    generate_demo(root, N_TRAIN, N_VAL, 0, image_size=32, audio="tones", workers=1)
    vocab = str(root / "vocab.txt")
    texts = [text for name in ("train.jsonl", "val.jsonl", "val_vqa.jsonl")
             for text in manifest_texts(read_manifest(root / name))]
    write_vocab(vocab, build_vocab(texts))
    rng = np.random.default_rng(0)
    (root / "codes").mkdir()
    lines = []
    for line in (root / "train.jsonl").read_text(encoding="utf-8").splitlines():
        sample = json.loads(line)
        np.save(root / "codes" / f"{sample['id']}.npy", rng.integers(0, 16, (4, 4)))
        lines.append(json.dumps({**sample, "image_tokens": f"codes/{sample['id']}.npy"}, ensure_ascii=False))
    (root / "train_tokens.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths = {}
    for name, manifest in (("train", "train_tokens"), ("val", "val"), ("vqa", "val_vqa")):
        paths[name] = str(root / f"{name}.mindrecord")
        build_mindrecord(str(root / f"{manifest}.jsonl"), paths[name], vocab, workers=1, max_frames=256)
    tokenizer = Tokenizer(vocab)
    cfg = model_config("tiny", [f"model.text.vocab_size={tokenizer.vocab_size}", f"data.vocab={vocab}",
                                f"run.seed={SEED}"])
    samples = {name: read_manifest(root / f"{manifest}.jsonl")
               for name, manifest in (("train", "train_tokens"), ("val", "val"), ("vqa", "val_vqa"))}
    return {"root": root, "paths": paths, "tokenizer": tokenizer, "cfg": cfg, "samples": samples}


def batches(data_set):
    return list(data_set.create_dict_iterator(num_epochs=1, output_numpy=True))


def pretrain(data, task, epoch=0, **kwargs):
    kwargs.setdefault("batch_size", B)
    return batches(build_pretrain_dataset(data["paths"]["train"], task, kwargs.pop("cfg", data["cfg"]),
                                          data["tokenizer"], epoch=epoch, **kwargs))


def eval_images(data, name="train"):
    """Eval-transformed image of every record, by index (the pretraining transform without random crop is the same)."""
    (batch,) = batches(build_eval_dataset(data["paths"][name], data["cfg"], data["tokenizer"], N_TRAIN,
                                          columns=["index", "image"]))
    return batch["image"][np.argsort(batch["index"])]


def test_every_task_has_exactly_the_contracted_columns(data):
    for task in PRETRAIN_TASKS:
        assert task_columns(task, has_audio=True) == COLUMNS[task]
        result = pretrain(data, task)
        assert len(result) == N_TRAIN // B
        batch = result[0]
        assert list(batch) == COLUMNS[task], task
        for name, value in batch.items():
            assert (value.shape, str(value.dtype)) == SHAPES[name], (task, name)
    assert task_columns("td", has_audio=False) == COMMON[:3] + ["image_masked", "dec_input", "dec_target",
                                                                 "dec_weights"]
    assert task_requirements("mam") == ("audio",) and task_requirements("id") == ("image_tokens",)
    assert task_requirements("itm") == ()     # without audio it becomes text-image pair matching
    assert task_requirements("mlm") == ()


def test_mlm_batch_is_a_pure_function_of_seed_epoch_and_index(data):
    tokenizer = data["tokenizer"]
    first = pretrain(data, "mlm")
    order = epoch_indices(N_TRAIN, SEED, 0, 0, 1, drop_remainder_to=B)
    for row in range(B):
        index = int(order[row])
        rng = sample_rng(SEED, 0, index)
        captions = data["samples"]["train"][index]["captions"]
        ids, mask = tokenizer.encode_padded(captions[rng.integers(len(captions))], 12)
        expected = mask_tokens(ids, mask, rng, mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                               special_ids=(0, 1, 2, 3, 4), max_predictions=8, prob=0.15)
        for name, value in zip(["text_ids", "mlm_positions", "mlm_labels", "mlm_weights"], expected):
            np.testing.assert_array_equal(first[0][name][row], value)
        np.testing.assert_array_equal(first[0]["text_mask"][row], mask)
    again, other_epoch = pretrain(data, "mlm"), pretrain(data, "mlm", epoch=1)
    for a, b in zip(first, again):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(first[0]["text_ids"], other_epoch[0]["text_ids"])


def test_masking_counts_of_mvm_mam_td_and_id(data):
    (mvm, *_), (mam, *_), (td, *_), (idt, *_) = (pretrain(data, task) for task in ("mvm", "mam", "td", "id"))
    assert (mvm["image_masked"].sum(axis=1) == 5).all()  # round(16 patches * 0.3)
    valid = mam["frame_mask"][:, ::4]
    assert not (mam["audio_masked"] * (1 - valid)).any()
    np.testing.assert_array_equal(mam["audio_masked"].sum(axis=1), np.floor(valid.sum(axis=1) * 0.3 + 0.5))
    tokenizer = data["tokenizer"]
    for row in range(B):
        length = td["text_mask"][row].sum()
        assert td["text_ids"][row][0] == tokenizer.cls_id and td["text_ids"][row][length - 1] == tokenizer.sep_id
        assert (td["text_ids"][row][1:length - 1] == tokenizer.mask_id).all()
        assert td["image_masked"][row].sum() in (5, 16)
        tokens = td["frame_mask"][row][::4].sum()
        assert td["audio_masked"][row].sum() in (np.floor(tokens * 0.3 + 0.5), tokens)
        weights = int(td["dec_weights"][row].sum())
        assert td["dec_input"][row][0] == tokenizer.cls_id and td["dec_target"][row][weights - 1] == tokenizer.sep_id
        np.testing.assert_array_equal(td["dec_input"][row][1:weights], td["dec_target"][row][:weights - 1])
    order = epoch_indices(N_TRAIN, SEED, 0, 0, 1, drop_remainder_to=B)
    codes = np.load(data["samples"]["train"][int(order[0])]["image_path"].replace("images", "codes")
                    .replace(".jpg", ".npy")).reshape(-1)
    np.testing.assert_array_equal(idt["img_dec_input"][0], [IMAGE_BOS_ID, *(codes + 3)])
    np.testing.assert_array_equal(idt["img_dec_target"][0], [*(codes + 3), IMAGE_EOS_ID])
    assert idt["img_dec_weights"][0].sum() == 17 and (idt["image_masked"] == 1).all()


def test_image_decoding_condition_dropout_gives_the_empty_prompt_to_its_share_of_samples(data):
    """pretrain.id_uncond_prob: the share of id samples decoded from the empty prompt (what t2i guidance encodes as
    the unconditional side), chosen per sample from (seed, epoch, index); codes and everything else unchanged."""
    tokenizer = data["tokenizer"]
    empty = tokenizer.encode_padded("", 12)
    plain = pretrain(data, "id")

    def with_prob(p):
        return pretrain(data, "id", cfg=data["cfg"].with_updates({"pretrain.id_uncond_prob": p}))
    everything, some = with_prob(1.0), with_prob(0.5)
    dropped = 0
    for p_batch, all_batch, some_batch in zip(plain, everything, some):
        for name in ("img_dec_input", "img_dec_target", "img_dec_weights", "image_masked", "image"):
            np.testing.assert_array_equal(p_batch[name], all_batch[name])
            np.testing.assert_array_equal(p_batch[name], some_batch[name])
        for row in range(B):
            np.testing.assert_array_equal(all_batch["text_ids"][row], empty[0])
            np.testing.assert_array_equal(all_batch["text_mask"][row], empty[1])
            is_empty = np.array_equal(some_batch["text_ids"][row], empty[0])
            if not is_empty:
                np.testing.assert_array_equal(some_batch["text_ids"][row], p_batch["text_ids"][row])
            assert p_batch["text_mask"][row].sum() > 2    # captions are never empty
            dropped += is_empty
    assert 0 < dropped < N_TRAIN                             # 24 samples at 0.5: all or none has p = 2^-23
    with pytest.raises(UserError, match="pretrain.id_uncond_prob"):
        with_prob(1.5)


def test_itm_labels_match_the_partner_rows_and_the_batch_is_unswapped(data):
    cfg = data["cfg"].with_updates({"model.audio.max_frames": 256})
    itm, itc = pretrain(data, "itm", batch_size=6, cfg=cfg), pretrain(data, "itc", batch_size=6, cfg=cfg)
    labels_seen = set()
    for batch, plain in zip(itm, itc):
        for name in COMMON:   # the task Cell picks the partners; the batch keeps every sample's own columns
            np.testing.assert_array_equal(batch[name], plain[name])
        for i, label in enumerate(batch["itm_labels"]):
            image_src, audio_src = int(batch["itm_image_src"][i]), int(batch["itm_audio_src"][i])
            assert 0 <= image_src < 6 and 0 <= audio_src < 6
            expected = {ITM_MATCHED: image_src == audio_src == i,
                        ITM_IMAGE_SWAPPED: image_src != i and audio_src == i,
                        ITM_AUDIO_SWAPPED: image_src == i and audio_src != i,
                        ITM_SAME_OTHER: image_src == audio_src != i,
                        ITM_BOTH_DIFFERENT: len({i, image_src, audio_src}) == 3}
            assert expected[int(label)], (label, i, image_src, audio_src)
            labels_seen.add(int(label))
    assert len(labels_seen) >= 3


def test_itm_without_audio_pairs_only_images_and_labels_the_pairs(data):
    cfg = data["cfg"].with_updates({"data.use_audio": False})
    labels_seen = set()
    for batch in pretrain(data, "itm", batch_size=6, cfg=cfg):
        assert "audio" not in batch and "itm_audio_src" not in batch
        for i, label in enumerate(batch["itm_labels"]):
            assert int(label) == (ITM_MATCHED if batch["itm_image_src"][i] == i else ITM_IMAGE_SWAPPED)
            labels_seen.add(int(label))
    assert labels_seen == {ITM_MATCHED, ITM_IMAGE_SWAPPED}


@pytest.mark.parametrize("use_audio", [True, False])
def test_itm_partners_of_two_ranks_are_the_single_process_partners(data, use_audio):
    """Two ranks at batch 3 draw the pairs of one process at batch 6 over the same samples: each rank's partner rows
    index the gathered global batch (rank 0's rows, then rank 1's) and name the sample one process pairs with."""
    cfg = data["cfg"].with_updates({"data.use_audio": use_audio})
    single = pretrain(data, "itm", batch_size=6, cfg=cfg)
    ranks = [pretrain(data, "itm", batch_size=3, cfg=cfg, rank=r, world=2) for r in range(2)]
    sources = {"itm_image_src": "image"} | ({"itm_audio_src": "audio"} if use_audio else {})
    remote = 0
    for step, one in enumerate(single):
        for r in range(2):
            mine = ranks[r][step]
            for j in range(3):
                row = j * 2 + r    # this sample's row in the single process's batch
                np.testing.assert_array_equal(mine["image"][j], one["image"][row])
                np.testing.assert_array_equal(mine["text_ids"][j], one["text_ids"][row])
                assert mine["itm_labels"][j] == one["itm_labels"][row]
                for src, column in sources.items():
                    gathered = np.concatenate([ranks[q][step][column] for q in range(2)])
                    np.testing.assert_array_equal(gathered[mine[src][j]], one[column][one[src][row]])
                    remote += int(mine[src][j] // 3 != r)
    assert remote > 0   # some partners live on the other rank


def test_two_ranks_read_disjoint_equal_shares_of_the_epoch(data):
    images = eval_images(data)
    for batch_size, per_rank in ((4, 12), (5, 10)):
        shares = [epoch_indices(N_TRAIN, SEED, 3, rank, 2, drop_remainder_to=batch_size) for rank in (0, 1)]
        assert [len(share) for share in shares] == [per_rank, per_rank]
        assert len(set(shares[0]) | set(shares[1])) == 2 * per_rank
        for rank, share in enumerate(shares):
            result = pretrain(data, "itc", epoch=3, rank=rank, world=2, batch_size=batch_size)
            read = np.concatenate([batch["image"] for batch in result])
            np.testing.assert_array_equal(read, images[share])
    np.testing.assert_array_equal(epoch_indices(5, 0, 0, 1, 2, shuffle=False), [1, 3])


def test_resume_from_a_batch_equals_the_tail_of_the_epoch(data):
    full, tail = pretrain(data, "td", epoch=2), pretrain(data, "td", epoch=2, start_batch=2)
    assert len(tail) == len(full) - 2
    for a, b in zip(full[2:], tail):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_eval_counts_every_sample_once_over_two_ranks(data):
    tokenizer, cfg = data["tokenizer"], data["cfg"]
    seen, counts = [], []
    for rank in (0, 1):
        result = batches(build_eval_dataset(data["paths"]["val"], cfg, tokenizer, 3, rank=rank, world=2))
        counts.append(len(result))
        for batch in result:
            assert list(batch) == ["index", "valid"] + COMMON
            assert batch["index"].dtype == np.int64 and batch["valid"].dtype == np.int32
            for row in range(3):
                index = int(batch["index"][row])
                ids, mask = tokenizer.encode_padded(data["samples"]["val"][index]["captions"][0], 12)
                np.testing.assert_array_equal(batch["text_ids"][row], ids)
                np.testing.assert_array_equal(batch["text_mask"][row], mask)
            seen += batch["index"][batch["valid"] == 1].tolist()
    assert counts == [2, 2]  # 4 and 3 samples, both as two batches of 3
    assert sorted(seen) == list(range(N_VAL))
    (vqa,) = batches(build_eval_dataset(data["paths"]["vqa"], cfg, tokenizer, 21,
                                        columns=["index", "question_ids", "question_mask"]))
    for row in range(21):
        question = data["samples"]["vqa"][int(vqa["index"][row])]["question"]
        np.testing.assert_array_equal(vqa["question_ids"][row], tokenizer.encode_padded(question, 12)[0])
    references = read_references(data["paths"]["val"])
    assert [ref["captions"] for ref in references] == [s["captions"] for s in data["samples"]["val"]]


def test_unfeedable_tasks_and_mismatched_data_are_user_errors(data, tmp_path):
    cfg, tokenizer, train = data["cfg"], data["tokenizer"], data["paths"]["train"]
    no_audio = cfg.with_updates({"data.use_audio": False})
    assert list(pretrain(data, "mlm", cfg=no_audio)[0]) == COMMON[:3] + COLUMNS["mlm"][5:]
    with pytest.raises(UserError, match=r"'mam' needs audio but data.use_audio is false.*pretrain.tasks.mam=0"):
        build_pretrain_dataset(train, "mam", no_audio, tokenizer, B, 0)
    with pytest.raises(UserError, match=r"'id' needs image tokens.*pretrain.tasks.id=0"):
        build_pretrain_dataset(data["paths"]["val"], "id", cfg, tokenizer, B, 0)
    with pytest.raises(UserError, match=r"at least 3 samples, got 2 x 1 device"):
        build_pretrain_dataset(train, "itm", cfg, tokenizer, 2, 0)
    assert len(pretrain(data, "itm", batch_size=2, rank=1, world=2))  # 2 x 2 devices: the global batch has 4
    with pytest.raises(UserError, match="cannot resume at batch 6"):
        build_pretrain_dataset(train, "mlm", cfg, tokenizer, B, 0, start_batch=6)
    with pytest.raises(UserError, match="unknown pretraining task 'xyz'"):
        task_columns("xyz", True)
    other = tmp_path / "other_vocab.txt"
    other.write_text(open(cfg.data.vocab, encoding="utf-8").read() + "extra\n", encoding="utf-8")
    with pytest.raises(UserError, match="sha256.*rebuild"):
        open_mindrecord(train, str(other))
    with pytest.raises(UserError, match="not found"):
        open_mindrecord(str(tmp_path / "none.mindrecord"), str(other))


@pytest.mark.parametrize("fingerprint", [None, "0123456789abcdef"])
def test_records_of_an_older_tokenizer_are_refused_with_the_rebuild_command(data, tmp_path, fingerprint):
    """A MindRecord whose meta lacks this tokenizer's fingerprint (built before the BERT-exact tokenizer, or under
    other rules) is refused by the loaders the trainers use, in one line naming the file and the rebuild command."""
    cfg, tokenizer, train = data["cfg"], data["tokenizer"], data["paths"]["train"]
    for name in glob.glob(train + "*"):
        shutil.copy(name, tmp_path)
    path = str(tmp_path / os.path.basename(train))
    meta_path = tmp_path / (os.path.basename(train) + ".meta.json")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    assert meta["tokenizer"] == tokenizer_fingerprint(vocab_sha256(cfg.data.vocab), True)
    assert open_mindrecord(path, cfg.data.vocab).count == N_TRAIN   # the intact copy is accepted
    if fingerprint is None:
        del meta["tokenizer"]
    else:
        meta["tokenizer"] = fingerprint
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    command = (f"python -m src.data.build_mindrecord --manifest {meta['manifest']} --out {path} "
               f"--vocab {cfg.data.vocab} --max_frames 256")
    for load in (lambda: build_pretrain_dataset(path, "mlm", cfg, tokenizer, B, 0),
                 lambda: build_caption_dataset(path, cfg, tokenizer, B, 0)):
        with pytest.raises(UserError) as error:
            load()
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"MindRecord {path} has ")
        assert message.endswith(command)
        assert ("no tokenizer fingerprint" if fingerprint is None else f"fingerprint {fingerprint}") in message
    assert open_mindrecord(path, None).count == N_TRAIN   # readers of raw text / images only do not care


def test_eval_dataset_pads_beyond_the_record_count(data):
    """Filler rows may outnumber the records (8 records, batch 32, 3 ranks): still every record exactly once."""
    cfg, tokenizer, path = data["cfg"], data["tokenizer"], data["paths"]["val"]
    n = open_mindrecord(path, cfg.data.vocab).count
    seen = []
    for rank in range(3):
        batches = list(build_eval_dataset(path, cfg, tokenizer, 32, rank=rank, world=3).create_dict_iterator(
            num_epochs=1, output_numpy=True))
        assert len(batches) == 1 and batches[0]["index"].shape == (32,)
        seen += batches[0]["index"][batches[0]["valid"] == 1].tolist()
    assert sorted(seen) == list(range(n))


def test_vqa_rationale_targets_are_rationale_separator_answer(data):
    from src.data.finetune_data import build_vqa_dataset
    tokenizer, samples = data["tokenizer"], data["samples"]["vqa"]
    cfg = data["cfg"].with_updates({"data.use_audio": False, "vqa.rationale": True,
                                    "model.text_decoder.max_len": 40})
    (batch,) = batches(build_vqa_dataset(data["paths"]["vqa"], cfg, tokenizer, len(samples), epoch=0))
    order = epoch_indices(len(samples), SEED, 0, 0, 1)
    for row, sample in enumerate(samples[i] for i in order):
        rationale = tokenizer.encode(sample["rationales"][0], 64)[1:-1].tolist()
        answer = tokenizer.encode(sample["answers"][0], 64)[1:-1].tolist()
        expected = rationale + [tokenizer.mask_id] + answer + [tokenizer.sep_id]
        length = int(batch["dec_weights"][row].sum())
        assert batch["dec_target"][row, :length].tolist() == expected
        assert batch["dec_input"][row, :length].tolist() == [tokenizer.cls_id] + expected[:-1]
    # a short decoder cuts the rationale, never the answer
    short = cfg.with_updates({"model.text_decoder.max_len": 8})
    (cut,) = batches(build_vqa_dataset(data["paths"]["vqa"], short, tokenizer, len(samples), epoch=0))
    for row, sample in enumerate(samples[i] for i in order):
        answer = tokenizer.encode(sample["answers"][0], 64)[1:-1].tolist()
        target = cut["dec_target"][row].tolist()
        assert target[8 - len(answer) - 2:] == [tokenizer.mask_id] + answer + [tokenizer.sep_id]


def test_pick_answer_draws_by_confidence():
    from src.data.finetune_data import pick_answer
    rng = np.random.default_rng(0)
    drawn = [pick_answer(["yes", "no", "maybe"], [1.0, 0.6, 0.0], rng) for _ in range(4000)]
    assert drawn.count("maybe") == 0
    assert drawn.count("yes") / len(drawn) == pytest.approx(1.0 / 1.6, abs=0.03)
    uniform = [pick_answer(["a", "a", "b"], [], rng) for _ in range(3000)]  # no scores: by count
    assert uniform.count("a") / len(uniform) == pytest.approx(2 / 3, abs=0.03)
    assert pick_answer(["a", "b"], [0.0, 0.0], np.random.default_rng(1)) in ("a", "b")


def test_vqa_training_answers_follow_the_confidences(data, tmp_path):
    """OFA-style answers with confidences: a 0-confidence answer is never the decoder target, the 1.0 one always."""
    from src.data.finetune_data import build_vqa_dataset
    lines = [json.loads(line) for line in (data["root"] / "val_vqa.jsonl").read_text(encoding="utf-8").splitlines()]
    decoy = "没有答案"
    scored = [{**line, "answers": [decoy] * 3 + line["answers"][:1], "answer_scores": [0.0] * 3 + [1.0]}
              for line in lines]
    manifest = tmp_path / "vqa.jsonl"
    manifest.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in scored), encoding="utf-8")
    (tmp_path / "images").symlink_to(data["root"] / "images")
    path = str(tmp_path / "vqa.mindrecord")
    build_mindrecord(str(manifest), path, data["cfg"].data.vocab, workers=1, max_frames=256)
    tokenizer = data["tokenizer"]
    cfg = data["cfg"].with_updates({"vqa.rationale": False, "model.text_decoder.max_len": 40})
    for epoch in range(3):
        (batch,) = batches(build_vqa_dataset(path, cfg, tokenizer, len(lines), epoch=epoch))
        for row, line in enumerate(lines[i] for i in epoch_indices(len(lines), SEED, epoch, 0, 1)):
            expected = tokenizer.encode(line["answers"][0], 64)[1:].tolist()
            assert batch["dec_target"][row, :int(batch["dec_weights"][row].sum())].tolist() == expected


def test_rationale_answer_ids_cut_the_rationale_first():
    from src.data.finetune_data import rationale_answer_ids
    CLS, SEP, MASK = 2, 3, 4
    rationale, answer = np.array([CLS, 10, 11, 12, 13, SEP]), np.array([CLS, 20, 21, SEP])
    assert rationale_answer_ids(rationale, answer, MASK, 10).tolist() == [CLS, 10, 11, 12, 13, MASK, 20, 21, SEP]
    assert rationale_answer_ids(rationale, answer, MASK, 7).tolist() == [CLS, 10, 11, MASK, 20, 21, SEP]
    assert rationale_answer_ids(rationale, answer, MASK, 5).tolist() == [CLS, MASK, 20, 21, SEP]
    assert rationale_answer_ids(rationale, answer, MASK, 4).tolist() == [CLS, MASK, 20, SEP]  # only now the answer


def test_vqa_rationale_training_needs_rationales_in_the_data(data, tmp_path):
    from src.data.finetune_data import build_vqa_dataset
    lines = [json.loads(line) for line in (data["root"] / "val_vqa.jsonl").read_text(encoding="utf-8").splitlines()]
    manifest = tmp_path / "vqa.jsonl"
    manifest.write_text("".join(json.dumps({k: v for k, v in line.items() if k != "rationales"},
                                           ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    (tmp_path / "images").symlink_to(data["root"] / "images")
    path = str(tmp_path / "vqa.mindrecord")
    build_mindrecord(str(manifest), path, data["cfg"].data.vocab, workers=1, max_frames=256)
    assert open_mindrecord(path, None).meta["has_rationales"] is False
    assert open_mindrecord(data["paths"]["vqa"], None).meta["has_rationales"] is True
    cfg = data["cfg"].with_updates({"data.use_audio": False, "vqa.rationale": True})
    with pytest.raises(UserError, match="without rationales.*vqa.rationale=false"):
        build_vqa_dataset(path, cfg, data["tokenizer"], 4, epoch=0)
    build_vqa_dataset(path, cfg.with_updates({"vqa.rationale": False}), data["tokenizer"], 4, epoch=0)


@pytest.fixture(scope="module")
def half_audio(data):
    """The demo train set with every second sample's audio dropped, as a MindRecord."""
    root = data["root"]
    kept = half_audio_manifest(root / "train.jsonl", root / "train_half_audio.jsonl")
    path = str(root / "train_half_audio.mindrecord")
    build_mindrecord(str(root / "train_half_audio.jsonl"), path, str(root / "vocab.txt"), workers=1, max_frames=256)
    return path, kept


def test_samples_without_audio_come_with_an_all_zero_frame_mask_and_nothing_to_reconstruct(data, half_audio):
    path, kept = half_audio
    assert open_mindrecord(path, None).meta["has_audio"] and len(kept) == N_TRAIN // 2
    present = []
    for batch in batches(build_pretrain_dataset(path, "mam", data["cfg"], data["tokenizer"], B, 0)):
        for frame_mask, audio, masked in zip(batch["frame_mask"], batch["audio"], batch["audio_masked"]):
            present.append(bool(frame_mask.any()))
            assert bool(audio.any()) == present[-1] and bool(masked.any()) == present[-1]
    assert len(present) == N_TRAIN and sum(present) == N_TRAIN // 2


def test_text_decoding_never_fully_masks_the_image_of_a_sample_without_audio(data, half_audio):
    path, _ = half_audio
    full = {True: 0, False: 0}  # samples whose image is fully masked, by audio presence
    for epoch in range(3):
        for batch in batches(build_pretrain_dataset(path, "td", data["cfg"], data["tokenizer"], B, epoch)):
            for frame_mask, image_masked in zip(batch["frame_mask"], batch["image_masked"]):
                full[bool(frame_mask.any())] += int(image_masked.sum() == 16)
    assert full[False] == 0
    assert full[True] > 0  # samples with audio still get the image fully masked (about 30% of them)
