"""Local MMK12 loading: parquet and MM-EUREKA JSONL layouts, validation errors, skip_bad_rows."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from eureka_kit.data.mmk12 import MMK12FormatError, load, open_image


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    return buf.getvalue()


def _parquet(folder, name, rows):
    (folder / "data").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / name)


def _row(i, subject="math", **kw):
    return dict(id=f"q{i}", question=f"What is {i}+1?", answer=str(i + 1),
                image={"bytes": _png(), "path": None}, subject=subject, **kw)


def test_parquet_layout(tmp_path):
    _parquet(tmp_path, "train-00000-of-00001.parquet", [_row(0), _row(1)])
    _parquet(tmp_path, "test-00000-of-00001.parquet", [_row(2, "physics"), _row(3, "math")])
    train = load(tmp_path, "train").rows
    assert [r["id"] for r in train] == ["q0", "q1"] and train[0]["answer"] == "1"
    assert open_image(train[0]["image"]).size == (8, 8)
    assert [r["subject"] for r in load(tmp_path, "test").rows] == ["physics", "math"]
    assert [r["id"] for r in load(tmp_path, "test", subject="physics").rows] == ["q2"]


def test_parquet_bad_row_names_file_and_row(tmp_path):
    _parquet(tmp_path, "train.parquet", [_row(0), {**_row(1), "question": ""}])
    with pytest.raises(MMK12FormatError, match=r"train\.parquet: row 1: question"):
        load(tmp_path, "train")
    res = load(tmp_path, "train", skip_bad_rows=True)
    assert len(res.rows) == 1 and res.skipped == 1 and "row 1" in res.errors[0]


def _jsonl_record(q, answer, image="img.png"):
    msg = [{"role": "system", "content": [{"type": "text", "text": "SYS"}]},
           {"role": "user", "content": [{"type": "image", "image": image},
                                        {"type": "text", "text": "<image>" + q}]}]
    return json.dumps({"message": json.dumps(msg), "answer": answer})


def test_jsonl_layout(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    (tmp_path / "train.jsonl").write_text(_jsonl_record("What is 2+2?", "4") + "\n\n"
                                          + _jsonl_record("Area?", "\\frac{1}{2}") + "\n")
    rows = load(tmp_path, "train").rows
    assert [r["question"] for r in rows] == ["What is 2+2?", "Area?"]
    assert rows[1]["answer"] == "\\frac{1}{2}" and rows[0]["subject"] == "math"
    assert open_image(rows[0]["image"]).size == (8, 8)


@pytest.mark.parametrize("line,reason", [
    ('{"message": "not json", "answer": "1"}', "message: not valid JSON"),
    ('{"answer": "1"}', "missing key"),
    ("{broken", "not valid JSON"),
    (None, "image: file not found"),
    (_jsonl_record("q", ""), "answer"),
])
def test_jsonl_bad_rows(tmp_path, line, reason):
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    line = line or _jsonl_record("q", "1", image="missing.png")
    (tmp_path / "train.jsonl").write_text(_jsonl_record("ok", "1") + "\n" + line + "\n")
    with pytest.raises(MMK12FormatError, match=rf"train\.jsonl: row 1: {reason}"):
        load(tmp_path, "train")
    res = load(tmp_path / "train.jsonl", "train", skip_bad_rows=True)
    assert res.skipped == 1 and len(res.rows) == 1


def test_missing_split_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no test"):
        load(tmp_path, "test")
