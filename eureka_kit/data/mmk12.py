"""MMK12 from a local folder (never the hub): HF parquet layout or MM-EUREKA's training JSONL layout.

* Parquet (HF `FanqingM/MMK12`): `data/{split}-*.parquet` (or any `*.parquet` whose name starts with the
  split) with columns `id, question, answer, image, subject`; `image` is the HF Image struct
  `{bytes, path}` (or raw bytes / None). `subject` may be missing in train (defaults to "math").
* JSONL (MM-EUREKA README): `*.jsonl` files whose name starts with the split (or a single .jsonl path),
  one object per line with `message` (a JSON *string* of chat turns: system + user content items
  `{type: image, image: path}` / `{type: text, text: question}`) and `answer`. Image paths are relative to
  the JSONL file's folder unless absolute; the question is the user turn's text (a leading "<image>"
  placeholder is removed).
Rows come out in the toy world's shape (`id, question, answer, image, subject, level`), `image` = bytes
(parquet) or a path (JSONL); `open_image` turns either into a PIL image. Level is None (unknown).
Every row is validated; a bad row raises `MMK12FormatError` naming file and row, or, with
`skip_bad_rows=True`, is skipped and counted.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

SUBJECTS = ("math", "physics", "chemistry", "biology")


class MMK12FormatError(ValueError):
    """A row of a local MMK12 file is malformed; the message names the file and the 0-based row."""


@dataclass
class LoadResult:
    rows: list[dict]
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    """messages of the skipped rows (file:row: reason), in order"""


def open_image(image) -> Image.Image | None:
    """PIL image from a row's `image` (None, PIL image, bytes, HF struct dict or a file path)."""
    if image is None or isinstance(image, Image.Image):
        return image
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray)):
        return Image.open(io.BytesIO(image))
    return Image.open(image)


def _nonempty_str(value, name: str) -> str:
    if isinstance(value, (int,)) and not isinstance(value, bool) and name == "id":
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: expected a non-empty string, got {value!r:.80}")
    return value


def _check_row(raw: dict, fallback_id: str) -> dict:
    """Validate one parquet-layout record (dict) and return it in the common row shape."""
    missing = [k for k in ("question", "answer") if k not in raw]
    if missing:
        raise ValueError(f"missing column(s) {missing}")
    image = raw.get("image")
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if image is not None and not isinstance(image, (bytes, bytearray, str)):
        raise ValueError(f"image: expected bytes, path or HF image struct, got {type(image).__name__}")
    if isinstance(image, (bytes, bytearray)):  # open it now: garbage, truncation and decompression bombs fail here
        try:
            with Image.open(io.BytesIO(image)) as im:
                im.verify()
        except Exception as exc:  # UnidentifiedImageError, DecompressionBombError, truncated data
            raise ValueError(f"image: unreadable ({type(exc).__name__}: {exc})") from None
    subject = raw.get("subject") or "math"
    if subject not in SUBJECTS:
        raise ValueError(f"subject: expected one of {SUBJECTS}, got {subject!r}")
    return dict(id=_nonempty_str(raw.get("id", fallback_id), "id"),
                question=_nonempty_str(raw["question"], "question"),
                answer=_nonempty_str(str(raw["answer"]) if isinstance(raw["answer"], (int, float))
                                     else raw["answer"], "answer"),
                image=image, subject=subject, level=None)


def _from_message(raw: dict, folder: Path, fallback_id: str) -> dict:
    """Validate one MM-EUREKA JSONL record and convert it to the parquet-layout record."""
    if "message" not in raw or "answer" not in raw:
        raise ValueError(f"missing key(s) {[k for k in ('message', 'answer') if k not in raw]}")
    try:
        turns = json.loads(raw["message"]) if isinstance(raw["message"], str) else raw["message"]
    except json.JSONDecodeError as exc:
        raise ValueError(f"message: not valid JSON ({exc.msg})") from None
    users = [t for t in turns if isinstance(t, dict) and t.get("role") == "user"]
    if not users:
        raise ValueError("message: no user turn")
    content = users[-1].get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    text = "".join(c.get("text", "") for c in content if c.get("type") == "text")
    text = text.removeprefix("<image>").strip()
    images = [c.get("image") for c in content if c.get("type") == "image"]
    image = None
    if images:
        path = Path(images[0].removeprefix("file://"))
        image = str(path if path.is_absolute() else folder / path)
        if not Path(image).exists():
            raise ValueError(f"image: file not found: {image}")
    return _check_row(dict(id=raw.get("id", fallback_id), question=text, answer=raw["answer"],
                           image=image, subject=raw.get("subject")), fallback_id)


def _files(root: Path, split: str) -> list[Path]:
    if root.is_file():
        return [root]
    files = sorted(p for ext in ("*.parquet", "*.jsonl") for p in root.rglob(ext) if p.name.startswith(split))
    if not files:
        raise FileNotFoundError(f"mmk12: no {split}*.parquet or {split}*.jsonl under {root}")
    return files


def _records(path: Path):
    """(row index, raw dict or a parse-error message) for each record of one file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        for i, rec in enumerate(pq.read_table(path).to_pylist()):
            yield i, rec
        return
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as exc:
                yield i, f"not valid JSON ({exc.msg})"


def load(path: str | Path, split: str = "train", *, subject: str | None = None,
         skip_bad_rows: bool = False) -> LoadResult:
    """Rows of MMK12 `split` from a local folder (or one file), validated.

    Args:
        path: folder holding the parquet or JSONL files, or a single file.
        split: "train" or "test" (matched as the file-name prefix).
        subject: keep only this subject (None = all).
        skip_bad_rows: skip and count malformed rows instead of raising MMK12FormatError.
    Returns:
        LoadResult(rows, skipped, errors).
    """
    result = LoadResult(rows=[])
    for file in _files(Path(path).expanduser(), split):
        for i, raw in _records(file):
            try:
                if isinstance(raw, str):
                    raise ValueError(raw)
                fallback = f"{file.stem}-{i}"
                row = (_check_row(raw, fallback) if file.suffix == ".parquet"
                       else _from_message(raw, file.parent, fallback))
            except (ValueError, TypeError, AttributeError) as exc:
                msg = f"{file}: row {i}: {exc}"
                if not skip_bad_rows:
                    raise MMK12FormatError(msg) from None
                result.skipped += 1
                result.errors.append(msg)
                continue
            if subject is None or row["subject"] == subject:
                result.rows.append(row)
    return result
