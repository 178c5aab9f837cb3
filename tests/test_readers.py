"""Input readers: every file kind round-trips the same records; bad input gives a precise InputError."""

import csv
import hashlib
import json
import os

import pytest

from tokensft.core.errors import ConfigError, InputError
from tokensft.records.readers import count_rows, detect_kind, display_name, input_fingerprint, iter_rows

RECORDS = [
    {"prompt": "What is 2+2?", "response": "4"},
    {"prompt": "Say hi, please", "response": "hi \"there\"\nnew line"},
    {"prompt": "Ünïcödé ✓", "response": "ok"},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_all_kinds(tmp_path, records):
    """The same records as jsonl, json, parquet, csv and a save_to_disk directory."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {"jsonl": write_jsonl(tmp_path / "data.jsonl", records)}
    paths["json"] = tmp_path / "data.json"
    paths["json"].write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    paths["parquet"] = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(records), paths["parquet"])
    paths["csv"] = tmp_path / "data.csv"
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    paths["hf-disk"] = tmp_path / "mydir"
    datasets.Dataset.from_list(records).save_to_disk(str(paths["hf-disk"]))
    return paths


def error_of(path, kind=None) -> InputError:
    """The InputError raised while reading all of `path`."""
    with pytest.raises(InputError) as info:
        list(iter_rows(path, kind))
    return info.value


def test_every_kind_round_trips_the_same_records(tmp_path):
    paths = write_all_kinds(tmp_path, RECORDS)
    for kind, path in paths.items():
        assert detect_kind(path) == kind
        rows = list(iter_rows(path))
        assert [r.record for r in rows] == RECORDS, kind
        assert [r.index for r in rows] == [0, 1, 2], kind
        assert all(r.error is None for r in rows), kind
        assert count_rows(path) == 3, kind


def test_where_strings_name_file_and_1_based_row(tmp_path):
    paths = write_all_kinds(tmp_path, RECORDS)
    wheres = {kind: [r.where for r in iter_rows(path)] for kind, path in paths.items()}
    assert wheres["jsonl"][2] == "data.jsonl line 3"
    assert wheres["json"][0] == "data.json item 1"
    assert wheres["parquet"][1] == "data.parquet row 2"
    assert wheres["csv"][2] == "data.csv row 3"
    assert wheres["hf-disk"][0] == "mydir (save_to_disk) row 1"


def test_display_name_keeps_short_paths_and_shortens_long_ones():
    assert display_name("data/train.jsonl") == "data/train.jsonl"
    assert display_name("/very/" + "long/" * 20 + "train.jsonl") == "train.jsonl"


def test_jsonl_blank_lines_count_toward_line_numbers_and_bad_lines_are_yielded(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n\n   \n{"text": oops}\n[1, 2]\n{"text": "b"}\n', encoding="utf-8")
    rows = list(iter_rows(path))
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert [r.where for r in rows] == [f"data.jsonl line {n}" for n in (1, 4, 5, 6)]
    assert rows[0].record == {"text": "a"} and rows[3].record == {"text": "b"}
    malformed, not_object = rows[1], rows[2]
    assert malformed.record is None and malformed.error.reason == "malformed_json"
    assert str(malformed.error).startswith("data.jsonl line 4: malformed JSON")
    assert "--skip-invalid" in str(malformed.error)
    assert not_object.record is None and not_object.error.reason == "wrong_type"
    assert "data.jsonl line 5" in str(not_object.error) and "a list" in str(not_object.error)
    assert count_rows(path) == 4  # bad lines are rows too: counts match what iter_rows yields


def test_json_items_that_are_not_objects_are_yielded_as_errors(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[{"text": "a"}, "b"]', encoding="utf-8")
    rows = list(iter_rows(path))
    assert rows[0].record == {"text": "a"}
    assert rows[1].record is None and str(rows[1].error).startswith("data.json item 2: is a string")


def test_csv_values_are_strings_and_empty_cells_are_empty_strings(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('id,prompt,response\n7,"a, b",\n8,c\n', encoding="utf-8")
    rows = list(iter_rows(path))
    assert rows[0].record == {"id": "7", "prompt": "a, b", "response": ""}
    assert rows[1].record == {"id": "8", "prompt": "c", "response": ""}


def test_csv_row_with_extra_cells_is_yielded_as_an_error(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("prompt,response\na,b\na,b,c\n", encoding="utf-8")
    rows = list(iter_rows(path))
    assert rows[0].error is None and rows[1].record is None
    assert str(rows[1].error).startswith("data.csv row 2: has 3 cells but the header has 2 columns")


def test_empty_files_say_they_have_no_records(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "header.csv").write_text("prompt,response\n")
    for name in ["empty.jsonl", "blank.jsonl", "empty.json", "header.csv"]:
        err = error_of(tmp_path / name)
        assert str(err).startswith(f"{name}: the file has no records"), name
        assert err.reason == "empty_file"


def test_empty_parquet_and_dataset_dir_have_no_records(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "e.parquet")
    assert "e.parquet: the file has no records" in str(error_of(tmp_path / "e.parquet"))
    datasets.Dataset.from_dict({"text": []}).save_to_disk(str(tmp_path / "edir"))
    assert "the file has no records" in str(error_of(tmp_path / "edir"))


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    rows = list(iter_rows(path))  # JSONL lines are independent: a bad line is a bad (skippable) row
    assert rows[0].record == {"text": "ok"} and rows[1].record is None and rows[1].error.reason == "encoding"
    err = rows[1].error
    assert str(err).startswith("latin.jsonl line 2: is not valid UTF-8")
    assert "re-encode the file as UTF-8" in str(err)
    json_path = tmp_path / "latin.json"
    json_path.write_bytes(b'[\n{"text": "ok"},\n{"text": "caf\xe9"}\n]')
    assert str(error_of(json_path)).startswith("latin.json line 3: is not valid UTF-8")
    csv_path = tmp_path / "latin.csv"
    csv_path.write_bytes(b"text\nok\ncaf\xe9\n")
    assert str(error_of(csv_path)).startswith("latin.csv line 3: is not valid UTF-8")


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n')
    assert [r.record for r in iter_rows(path)] == [{"text": "a"}]


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.jsonl: file not found"):
        iter_rows(tmp_path / "nope.jsonl")  # raises at the call, before any iteration


def test_unreadable_file(tmp_path):
    path = write_jsonl(tmp_path / "secret.jsonl", RECORDS)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: a chmod 000 file is still readable")
        with pytest.raises(InputError, match=r"secret\.jsonl: cannot be read: permission denied") as info:
            iter_rows(path)
        assert info.value.reason == "unreadable"
    finally:
        path.chmod(0o644)


def test_unreadable_file_when_running_as_root(tmp_path, monkeypatch):
    """Root reads a chmod 000 file anyway; pretend the permission check failed to cover the message."""
    import tokensft.records.readers as readers

    path = write_jsonl(tmp_path / "secret.jsonl", RECORDS)
    monkeypatch.setattr(readers.os, "access", lambda p, mode: False)
    with pytest.raises(InputError, match=r"secret\.jsonl: cannot be read: permission denied"):
        iter_rows(path)


def test_input_format_must_fit_file_or_directory(tmp_path):
    paths = write_all_kinds(tmp_path, RECORDS)
    with pytest.raises(InputError, match="is a file, which --input-format hf-disk cannot read"):
        iter_rows(paths["jsonl"], kind="hf-disk")
    with pytest.raises(InputError, match="is a directory, which --input-format jsonl cannot read"):
        iter_rows(paths["hf-disk"], kind="jsonl")
    assert [r.record for r in iter_rows(paths["hf-disk"], kind="hf-disk")] == RECORDS


def test_unknown_extension_lists_supported_kinds_and_the_override(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text('{"text": "a"}\n')
    with pytest.raises(InputError) as info:
        iter_rows(path)
    message = str(info.value)
    assert message.startswith("data.txt: unknown file type '.txt'")
    assert ".jsonl" in message and ".parquet" in message and "--input-format" in message
    assert [r.record for r in iter_rows(path, kind="jsonl")] == [{"text": "a"}]
    assert count_rows(path, kind="jsonl") == 1
    with pytest.raises(ConfigError, match="--input-format 'xml'"):
        iter_rows(path, kind="xml")


def test_json_top_level_must_be_a_list(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"data": [{"text": "a"}]}')
    err = error_of(path)
    assert str(err).startswith("data.json: top level is an object, expected a list of objects; its keys are ['data']")
    assert "JSON array" in str(err) and err.reason == "wrong_type"


def test_malformed_json_document_names_the_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n{"text": "a"},\n{"text": }\n]')
    assert str(error_of(path)).startswith("data.json line 3: malformed JSON")


def test_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not a `datasets` save_to_disk directory"):
        iter_rows(tmp_path / "plain")


def test_dataset_dict_directory_asks_for_one_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS)})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"DatasetDict with splits \['train'\].*pass one split's directory"):
        iter_rows(tmp_path / "dd")


def test_fingerprint_is_stable_and_tracks_content(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = write_all_kinds(tmp_path / "a", RECORDS)
    fewer = write_all_kinds(tmp_path / "b", RECORDS[:2])
    for kind, path in paths.items():
        assert input_fingerprint(path) == input_fingerprint(path), kind
        assert input_fingerprint(path) != input_fingerprint(fewer[kind]), kind
    assert input_fingerprint(paths["jsonl"]) == hashlib.sha256(paths["jsonl"].read_bytes()).hexdigest()


def test_parquet_reads_in_batches_in_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 2500  # more than one record batch
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(n)]}), tmp_path / "big.parquet", row_group_size=700)
    rows = list(iter_rows(tmp_path / "big.parquet"))
    assert [r.index for r in rows] == list(range(n))
    assert rows[-1].record == {"text": f"t{n - 1}"} and rows[-1].where == "big.parquet row 2500"
    assert count_rows(tmp_path / "big.parquet") == n
