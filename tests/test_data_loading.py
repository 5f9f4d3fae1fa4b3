"""Loading local files, folders, saved and hub datasets; the tokenisation cache; truncation."""
import logging

import datasets
import pytest

from tokenizer_fixture import FIXTURES, label_text, prepare, tiny_tokenizer

from fusedrl.engine.data import DataConfig, DatasetSpec, load_rows, prepare_dataset
from fusedrl.engine.data.tokenize import truncate

JSONL = FIXTURES / "trl_prompt_completion.jsonl"


def _rows(spec, tmp_path):
    ds, provenance = load_rows(DatasetSpec(**spec), cache_dir=str(tmp_path / "cache"))
    return ds.to_list(), provenance


def test_jsonl_parquet_csv_and_saved_datasets_load_alike(tmp_path):
    expected, _ = _rows({"path": str(JSONL)}, tmp_path)
    raw = datasets.Dataset.from_list(expected)
    raw.to_parquet(str(tmp_path / "data.parquet"))
    raw.to_json(str(tmp_path / "data.data"), lines=True)
    raw.save_to_disk(str(tmp_path / "saved"))
    assert _rows({"path": str(tmp_path / "data.parquet")}, tmp_path)[0] == expected
    assert _rows({"path": str(tmp_path / "data.data"), "ds_type": "json"}, tmp_path)[0] == expected
    assert _rows({"path": str(tmp_path / "saved")}, tmp_path)[0] == expected
    assert _rows({"path": "json", "data_files": [str(JSONL)]}, tmp_path)[0] == expected
    csv, _ = _rows({"path": str(FIXTURES / "trl_prompt_completion.csv")}, tmp_path)
    assert [r["completion"] for r in csv] == [" four", " Paris"]


def test_folder_loads_every_file_and_remembers_where_rows_came_from(tmp_path):
    rows, provenance = _rows({"path": str(FIXTURES / "sharded")}, tmp_path)
    assert len(rows) == 5 and rows[2]["prompt"] == "Sky colour?"
    part1 = str(FIXTURES / "sharded" / "part-1.jsonl")
    assert provenance.locate(2) == (part1, 0) and provenance.locate(4) == (part1, 2)
    assert provenance.locate(1) == (str(FIXTURES / "sharded" / "part-0.jsonl"), 1)
    only, _ = _rows({"path": str(FIXTURES / "sharded"), "data_files": ["part-1.jsonl"]}, tmp_path)
    assert [r["prompt"] for r in only] == ["Sky colour?", "Grass colour?", "Sea colour?"]


def test_missing_local_files_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="data files not found"):
        _rows({"path": str(FIXTURES / "sharded"), "data_files": ["nope.jsonl"]}, tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no json/jsonl/parquet/csv files"):
        _rows({"path": str(tmp_path / "empty")}, tmp_path)
    (tmp_path / "x.data").write_text("{}")
    with pytest.raises(ValueError, match=r"cannot tell one file type \(\['csv', 'json', 'parquet'\]\).*set ds_type"):
        _rows({"path": str(tmp_path / "x.data")}, tmp_path)


def test_hub_ids_go_to_load_dataset(monkeypatch, tmp_path):
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_list([{"question": "q", "chosen": "a", "rejected": "b"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds, provenance = load_rows(DatasetSpec(path="Intel/orca_dpo_pairs", split="train[:10]", name="default",
                                           revision="main", columns={"question": "prompt"}))
    assert calls == [("Intel/orca_dpo_pairs", "default",
                      {"split": "train[:10]", "revision": "main", "data_files": None, "cache_dir": None})]
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    assert provenance.name == "Intel/orca_dpo_pairs [train[:10]]"


def test_tokenisation_is_cached_by_tokenizer_template_and_lengths(tmp_path):
    tok = tiny_tokenizer()
    spec = {"path": str(FIXTURES / "trl_messages.jsonl")}

    def cache_file(tokenizer=tok, **config):
        ds = prepare_dataset(spec, tokenizer, "sft", DataConfig(cache_dir=str(tmp_path), **config))
        return ds.cache_files[0]["filename"]

    first = cache_file()
    assert cache_file() == first
    others = {cache_file(max_length=64), cache_file(max_prompt_length=8), cache_file(chat_template="chatml"),
              cache_file(tokenizer=tiny_tokenizer(add_bos=True)), cache_file(on_bad_row="skip")}
    assert first not in others and len(others) == 5


@pytest.mark.parametrize("mask,max_length,max_prompt_length,window", [
    ([0, 0, 0, 1, 1, 1], 10, None, (0, 6)),
    ([0, 0, 0, 1, 1, 1], 4, None, (0, 4)),      # completion tail cut
    ([0, 0, 0, 1, 1, 1], 4, 2, (1, 5)),         # prompt keeps its end, then the completion is cut
    ([0, 0, 0, 0, 1, 0, 1], 5, 1, (3, 7)),
])
def test_truncate(mask, max_length, max_prompt_length, window):
    assert truncate(mask, max_length, max_prompt_length) == window


def test_truncation_keeps_prompt_end_and_completion_start(tmp_path, caplog):
    tok = tiny_tokenizer()
    full, _ = prepare("trl_prompt_completion.jsonl", "sft", tmp_path)
    with caplog.at_level(logging.INFO, logger="fusedrl.engine.data.pipeline"):
        cut, batch = prepare("trl_prompt_completion.jsonl", "sft", tmp_path, max_length=8, max_prompt_length=5)
    assert f"truncated {len(cut)} of {len(cut)} records of " in caplog.text
    assert "to max_length=8, max_prompt_length=5" in caplog.text
    for whole, kept in zip(full, cut):
        prompt_len = whole["completion_mask"].index(1)
        assert kept["input_ids"][:5] == whole["input_ids"][prompt_len - 5: prompt_len]
        assert kept["input_ids"][5:] == whole["input_ids"][prompt_len: prompt_len + 3]
    assert all(len(t) > 0 for t in label_text(tok, batch["labels"]))


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_data_file_names_the_file(tmp_path, content):
    (tmp_path / "empty.jsonl").write_text(content)
    with pytest.raises(ValueError, match=r"empty.jsonl: the data file has no rows"):
        _rows({"path": str(tmp_path / "empty.jsonl")}, tmp_path)


@pytest.mark.parametrize("path", ["data/nope.jsonl", "./nope", "/no/such/folder"])
def test_missing_local_path_is_not_a_hub_id(tmp_path, path):
    with pytest.raises(ValueError, match="local data file or folder not found"):
        _rows({"path": path}, tmp_path)


@pytest.mark.parametrize("name, algorithm, config, cut", [
    ("trl_preference.jsonl", "dpo", {"max_length": 8, "max_prompt_length": 4}, "all"),
    ("trl_preference.jsonl", "kto", {"max_length": 8, "max_prompt_length": 4}, "all"),
    ("trl_prompt_only.jsonl", "grpo", {"max_length": 64, "max_prompt_length": 2}, "all"),
    ("trl_preference.jsonl", "dpo", {"max_length": 512}, "none"),
])
def test_truncated_records_are_counted_in_the_log(tmp_path, caplog, name, algorithm, config, cut):
    with caplog.at_level(logging.INFO, logger="fusedrl.engine.data.pipeline"):
        ds, _ = prepare(name, algorithm, tmp_path, **config)
    if cut == "all":
        assert f"truncated {len(ds)} of {len(ds)} records" in caplog.text
    else:
        assert "truncated" not in caplog.text


def test_malformed_json_lines_name_the_file(tmp_path):
    (tmp_path / "cut.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "compl\n')
    with pytest.raises(ValueError, match=r"cut.jsonl: cannot read the file: "):
        _rows({"path": str(tmp_path / "cut.jsonl")}, tmp_path)
