"""The tokenizer benchmark runs on a small vocabulary and counts the texts whose ids MindSpore's NFKC changes."""
import argparse

from bench import tokenizer as bench


def small_inputs(tmp_path):
    """A 16-token vocabulary and a one-line manifest whose second caption holds the full-width comma."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"左边有一个红色的圆", "，", ","]) + "\n",
                     encoding="utf-8")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "1", "image": "1.jpg", "captions": ["左边有一个红色的圆", "左边，一个圆"]}\n',
                        encoding="utf-8")
    return vocab, manifest


def test_tokenizer_benchmark_rows_and_differing_texts(tmp_path, capsys):
    vocab, manifest = small_inputs(tmp_path)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--vocab", str(vocab), "--manifest", str(manifest), "--texts", "4"])
    results = bench.run(args)
    assert [row["tokenizer"] for row in results["rows"]] == ["mindspore BertTokenizer", "src.data.tokenizer (BERT)"]
    assert all(row["sentences_per_s"] > 0 for row in results["rows"])
    # texts cycle: 2 of the 4 hold ， which MindSpore folds to ,
    assert results["n_texts"] == 4 and results["texts_with_different_ids"] == 2
    assert "ids differ on 2" in capsys.readouterr().out


def test_results_page_gets_one_section_per_command(tmp_path, monkeypatch):
    """`scripts/benchmark.py ... --results PAGE` writes the run's table under a heading naming the command, with the
    commit, machine and load; a rerun of the same command replaces its section, another command adds one."""
    import importlib.util
    import os

    import bench as bench_package
    from tests.helpers import ROOT
    spec = importlib.util.spec_from_file_location("benchmark_cli", os.path.join(ROOT, "scripts", "benchmark.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    vocab, manifest = small_inputs(tmp_path)
    page = tmp_path / "benchmark.md"
    monkeypatch.setattr(bench_package, "PRINTED", [])

    def run(texts):
        bench_package.PRINTED.clear()
        argv = ["tokenizer", "--vocab", str(vocab), "--manifest", str(manifest), "--texts", texts,
                "--results", str(page)]
        assert cli.main(argv) == 0
        return f"## `python scripts/benchmark.py tokenizer --vocab {vocab} --manifest {manifest} --texts {texts}`"

    first = run("4")
    run("2")
    again = run("4")
    assert first == again
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# Benchmark results")
    assert text.count(first) == 1 and text.count("## `") == 2
    section = text[text.index(first):]
    assert "commit " in section and "MindSpore 2." in section and "load average" in section
    assert "| mindspore BertTokenizer |" in section and "sentences_per_s" in section
