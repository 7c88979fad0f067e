"""The tokenizer benchmark runs on a small vocabulary and counts the texts whose ids MindSpore's NFKC changes."""
import argparse

from bench import tokenizer as bench


def test_tokenizer_benchmark_rows_and_differing_texts(tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"左边有一个红色的圆", "，", ","]) + "\n",
                     encoding="utf-8")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "1", "image": "1.jpg", "captions": ["左边有一个红色的圆", "左边，一个圆"]}\n',
                        encoding="utf-8")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--vocab", str(vocab), "--manifest", str(manifest), "--texts", "4"])
    results = bench.run(args)
    assert [row["tokenizer"] for row in results["rows"]] == ["mindspore BertTokenizer", "src.data.tokenizer (BERT)"]
    assert all(row["sentences_per_s"] > 0 for row in results["rows"])
    # texts cycle: 2 of the 4 hold ， which MindSpore folds to ,
    assert results["n_texts"] == 4 and results["texts_with_different_ids"] == 2
    assert "ids differ on 2" in capsys.readouterr().out
