import json

import pytest

from ckd.common.files import write_json_atomic, write_text_atomic


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"a": float("nan")})  # not valid JSON: refused
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_atomic_text_write_creates_the_folder_and_replaces_the_file(tmp_path):
    path = tmp_path / "new" / "summary.csv"
    assert write_text_atomic(path, "a,b\n") == path
    write_text_atomic(path, "a,b\r\n1,2\n")
    assert path.read_bytes() == b"a,b\r\n1,2\n"  # written as given: no newline translation
    assert [p.name for p in path.parent.iterdir()] == ["summary.csv"]
