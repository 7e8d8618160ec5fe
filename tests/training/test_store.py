"""Trained LoRAs in the cache: status from the disk alone, the finished record, the LoraRef a
character gains, and `clean`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import run_cli
from storyboard.commands import clean
from storyboard.output.cache import PanelCache
from storyboard.paths import trained_loras_dir
from storyboard.plan.jobs import LoraRef, ModelRef
from storyboard.training.jobs import TrainJob, TrainSettings, with_key
from storyboard.training.store import (
    DONE_FILE, KOHYA_FILE, LORA_FILE, TrainedStore, checkpoint_name, trained_loras,
    trained_status,
)

SETTINGS = TrainSettings(steps=20, rank=4, alpha=4.0, learning_rate=1e-4, batch_size=1,
                         resolution=64, seed=1, min_snr_gamma=5.0, train_text_encoder=False,
                         prior=None, checkpoint_every=10, mixed_precision="no")


def job(character="mira", steps=20, weight=0.7) -> TrainJob:
    return with_key(TrainJob(character, "ohwx", "girl", "sdxl",
                             ModelRef("builtin", "tiny-sdxl", family="sdxl"), (),
                             replace(SETTINGS, steps=steps), weight))


def train(store: TrainedStore, j: TrainJob, data: bytes = b"lora weights") -> Path:
    """What a finished trainer leaves: the two files, then the record."""
    folder = store.folder(j.key)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LORA_FILE).write_bytes(data)
    (folder / KOHYA_FILE).write_bytes(b"kohya " + data)
    store.mark_done(j)
    return folder


def test_folder_is_the_key_under_the_trained_dir(tmp_path):
    store = TrainedStore(tmp_path)
    j = job()
    assert store.folder(j.key) == trained_loras_dir(tmp_path) / j.key
    assert store.folder(j.key) == tmp_path / "trained" / j.key
    with pytest.raises(ValueError):
        store.folder("../escape")


def test_status_to_train_partly_trained_and_up_to_date(tmp_path):
    store = TrainedStore(tmp_path)
    j = job()
    assert store.status(j) == "to train"
    checkpoints = store.folder(j.key) / "checkpoints"
    (checkpoints / checkpoint_name(10)).mkdir(parents=True)
    (checkpoints / ".step-000020.abcdefgh.tmp").mkdir()  # being written: not a checkpoint
    assert checkpoint_name(10) == "step-000010"
    assert store.status(j) == "partly trained (step 10 of 20)"
    train(store, j)
    assert store.status(j) == "up to date"
    record = json.loads((store.folder(j.key) / DONE_FILE).read_text())
    assert record["key"] == j.key and record["steps"] == 20
    assert record["files"][LORA_FILE] == {
        "sha256": hashlib.sha256(b"lora weights").hexdigest(), "bytes": 12}
    assert set(record["files"]) == {LORA_FILE, KOHYA_FILE}


def test_the_default_store_is_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path))
    j = job()
    assert trained_status(j) == "to train"
    train(TrainedStore(tmp_path), j)
    assert trained_status(j) == "up to date"
    assert trained_loras([j])["mira"].path == str(tmp_path / "trained" / j.key / LORA_FILE)


@pytest.mark.parametrize("damage", ["missing-record", "other-key", "other-steps", "garbage",
                                    "lora-gone", "lora-resized", "lora-is-a-folder", "huge"])
def test_a_damaged_or_foreign_record_is_not_finished(tmp_path, damage):
    store = TrainedStore(tmp_path)
    j = job()
    folder = train(store, j)
    done = folder / DONE_FILE
    record = json.loads(done.read_text())
    if damage == "missing-record":
        done.unlink()
    elif damage == "other-key":
        done.write_text(json.dumps({**record, "key": "0" * 64}))
    elif damage == "other-steps":
        done.write_text(json.dumps({**record, "steps": 10}))
    elif damage == "garbage":
        done.write_text("{not json")
    elif damage == "lora-gone":
        (folder / LORA_FILE).unlink()
    elif damage == "lora-resized":
        (folder / LORA_FILE).write_bytes(b"short")
    elif damage == "lora-is-a-folder":
        (folder / LORA_FILE).unlink()
        (folder / LORA_FILE).mkdir()
    elif damage == "huge":
        done.write_text(" " * 5000 + json.dumps(record))
    assert store.finished(j) is None
    assert store.status(j) == "to train"
    assert store.loras([j]) == {}


def test_the_record_is_for_one_step_count(tmp_path):
    store = TrainedStore(tmp_path)
    j = job()
    train(store, j)
    longer = replace(j, settings=replace(j.settings, steps=40))  # same key, as if forged
    assert store.status(longer) == "to train"


def test_mark_done_needs_the_lora(tmp_path):
    store = TrainedStore(tmp_path)
    j = job()
    store.folder(j.key).mkdir(parents=True)
    with pytest.raises(FileNotFoundError):
        store.mark_done(j)
    assert not (store.folder(j.key) / DONE_FILE).exists()
    (store.folder(j.key) / LORA_FILE).write_bytes(b"x")
    assert set(store.mark_done(j).files) == {LORA_FILE}  # the kohya copy is optional


def test_loras_each_trained_character_gains(tmp_path):
    store = TrainedStore(tmp_path)
    mira, bolt = job("mira", weight=0.7), job("bolt", steps=30, weight=1.0)
    folder = train(store, mira, b"mira's weights")
    assert store.loras([mira, bolt]) == {"mira": LoraRef(
        "mira", str(folder / LORA_FILE), hashlib.sha256(b"mira's weights").hexdigest(), 0.7)}
    (folder / LORA_FILE).write_bytes(b"mira's weightz")  # same size, other bytes
    assert store.status(mira) == "up to date"  # status stays cheap: sizes, not hashes
    assert store.loras([mira]) == {}  # but a build never renders with changed weights


def test_clean_removes_trained_loras_no_story_needs(tmp_path):
    store = TrainedStore(tmp_path)
    kept, dropped, partial, orphan = job("a"), job("b", steps=30), job("c", steps=40), \
        job("d", steps=50)
    for j in (kept, dropped):
        train(store, j)
    (store.folder(partial.key) / "checkpoints" / checkpoint_name(10)).mkdir(parents=True)
    (store.folder(partial.key) / "checkpoints" / checkpoint_name(10) / "state").write_bytes(
        b"1234")
    train(store, orphan)
    (trained_loras_dir(tmp_path) / "not-a-key").mkdir()  # not storyboard's: left alone
    story = tmp_path / "story.yaml"
    story.write_text("version: 1\n")
    gone = tmp_path / "gone.yaml"
    gone.write_text("version: 1\n")
    store.set_roots(story, {kept.key, partial.key})
    store.set_roots(gone, {orphan.key})
    gone.unlink()  # its story is gone: what it needed is garbage
    cache = PanelCache(tmp_path)

    dry = clean([], dry_run=True, cache=cache)
    assert dry.trained == sorted([dropped.key, orphan.key]) and dry.freed > 0
    assert store.keys() == {kept.key, dropped.key, partial.key, orphan.key}

    report = clean([], cache=cache)
    assert report.trained == dry.trained and report.freed == dry.freed
    assert store.keys() == {kept.key, partial.key}
    assert store.status(kept) == "up to date"
    assert store.status(partial) == "partly trained (step 10 of 40)"
    assert (trained_loras_dir(tmp_path) / "not-a-key").is_dir()
    assert store.live_keys() == ({kept.key, partial.key}, [])  # the gone story's root went


def test_clean_cli_counts_trained_loras(tmp_path, monkeypatch):
    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path))
    train(TrainedStore(tmp_path), job())
    result = run_cli("clean", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would remove 0 cached panel(s), 1 trained LoRA(s), 0.0 MB" in result.output
