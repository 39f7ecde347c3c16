"""The demo dataset the README's first command builds: real, complete, and a no-op when rerun."""

from __future__ import annotations

from distlm.config import DataConfig
from distlm.data import dataset_vocab_size, load_tokenizer
from distlm.data.demo_corpus import prepare_demo_dataset
from distlm.data.inspect_dataset import verify
from distlm.data.manifest import read_manifest


def test_demo_dataset_is_built_once(tmp_path):
    kw = dict(
        vocab_size=512,
        max_bytes=1_000_000,
        val_fraction=0.1,
        workers=2,
        progress=False,
        verbose=False,
    )
    out = prepare_demo_dataset(tmp_path / "demo", **kw)
    assert dataset_vocab_size(DataConfig(path=str(out))) == 512
    train, val = read_manifest(out / "train"), read_manifest(out / "val")
    assert train.total_documents > 3 * val.total_documents > 0
    assert verify(out) == len(train.shards) + len(val.shards)
    tok = load_tokenizer(str(out))
    assert tok.decode(tok.encode("import os\n\tx = 1  # é")) == "import os\n\tx = 1  # é"
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    prepare_demo_dataset(tmp_path / "demo", **kw)
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*")}
