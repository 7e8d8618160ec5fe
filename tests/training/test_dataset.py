"""Reference pictures checked before training: orientation, transparency, broken files,
non-regular files, the data filter, captions, duplicates, counts."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest
from PIL import Image

from storyboard import constants as C
from storyboard.errors import ERROR, WARNING
from storyboard.training import dataset as D
from storyboard.training.images import open_picture

FILTER = D.DataFilter(min_side=32, min_aspect=0.5, max_aspect=2.0, min_images=3)


def picture(path: Path, size=(64, 64), color=(200, 30, 30), mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def scan(folder: Path, data_filter=FILTER, **kw):
    kw = {"token": "ohwx", "class_word": "girl", "description": "curly red hair", **kw}
    return D.scan_dataset(folder, "refs", data_filter=data_filter, **kw)


def messages(dataset, severity=WARNING):
    return [f.message for f in dataset.findings if f.severity == severity]


@pytest.fixture(autouse=True)
def no_hang():
    """A test that blocks (on a FIFO, say) fails after 10 s instead of hanging the run."""
    def fail(*_):
        raise TimeoutError("blocked")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_pictures_are_read_in_name_order_with_their_facts(tmp_path):
    for i, name in enumerate(["b.png", "a.jpg", "c.webp"]):
        picture(tmp_path / name, color=(i * 80, 10, 10))
    picture(tmp_path / ".hidden.png", color=(1, 2, 3))
    (tmp_path / "notes.md").write_text("mine")
    (tmp_path / "sub").mkdir()
    picture(tmp_path / "sub" / "deeper.png", color=(9, 9, 9))
    ds = scan(tmp_path)
    assert [Path(i.path).name for i in ds.images] == ["a.jpg", "b.png", "c.webp"]
    assert all(i.path == str(tmp_path / Path(i.path).name) for i in ds.images)
    first = ds.images[0]
    assert (first.width, first.height) == (64, 64)
    import hashlib
    assert first.sha256 == hashlib.sha256((tmp_path / "a.jpg").read_bytes()).hexdigest()
    assert ds.excluded == () and ds.ok
    assert messages(ds) == []  # 3 pictures: not fewer than min_images


def test_exif_orientation_is_honoured(tmp_path):
    im = Image.new("RGB", (80, 40), (10, 200, 10))
    im.paste((200, 10, 10), (0, 0, 10, 10))  # a red corner, top left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: shown rotated 90 degrees clockwise
    path = tmp_path / "phone.jpg"
    im.save(path, exif=exif.tobytes(), quality=95)
    ds = scan(tmp_path, D.DataFilter(32, 0.5, 2.0, 1))
    assert [(i.width, i.height) for i in ds.images] == [(40, 80)]
    upright = open_picture(path)
    assert upright.size == (40, 80)
    r, g, _ = upright.getpixel((35, 3))  # the corner is now top right
    assert r > 150 and g < 80


def test_transparency_is_flattened_onto_white(tmp_path):
    im = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    im.putpixel((0, 0), (0, 0, 255, 0))
    path = tmp_path / "cut-out.png"
    im.save(path)
    flat = open_picture(path)
    assert flat.mode == "RGB"
    assert flat.getpixel((0, 0)) == (255, 255, 255) and flat.getpixel((5, 5)) == (255, 0, 0)
    assert len(scan(tmp_path, D.DataFilter(32, 0.5, 2.0, 1)).images) == 1


def test_broken_pictures_are_named_and_left_out(tmp_path):
    good = picture(tmp_path / "good.png")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "text.png").write_text("not a picture at all")
    (tmp_path / "empty.webp").write_bytes(b"")
    ds = scan(tmp_path, D.DataFilter(32, 0.5, 2.0, 1))
    assert [i.path for i in ds.images] == [str(good)]
    left = {e.path: e.reason for e in ds.excluded}
    assert set(left) == {"refs/cut.jpg", "refs/text.png", "refs/empty.webp"}
    assert all(r.startswith("broken or not a picture") for r in left.values())
    assert any(m.startswith("refs/cut.jpg: broken") and m.endswith("left out")
               for m in messages(ds))


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    picture(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")
    os.mkfifo(tmp_path / "a.txt")  # a caption that would block a plain open()
    ds = scan(tmp_path, D.DataFilter(32, 0.5, 2.0, 1))
    assert [Path(i.path).name for i in ds.images] == ["a.png"]
    assert ds.excluded == (D.Excluded("refs/b.png", "not a regular file"),)
    assert ds.images[0].caption == "ohwx girl, curly red hair"  # the FIFO caption is not read
    assert any(m.startswith("refs/a.txt: cannot be read") for m in messages(ds))


def test_the_data_filter_leaves_out_small_and_oddly_shaped_pictures(tmp_path):
    picture(tmp_path / "ok.png", (64, 40))
    picture(tmp_path / "small.png", (31, 64))
    picture(tmp_path / "wide.png", (130, 64))
    picture(tmp_path / "tall.png", (40, 81))
    picture(tmp_path / "edge.png", (128, 64))  # exactly 2.0: kept
    ds = scan(tmp_path)
    assert sorted(Path(i.path).name for i in ds.images) == ["edge.png", "ok.png"]
    left = {e.path: e.reason for e in ds.excluded}
    assert left["refs/small.png"] == "too small: 31x64, the shorter side is under 32 pixels"
    assert left["refs/wide.png"] == "aspect ratio 2.03 (130x64) is outside 0.5 to 2"
    assert left["refs/tall.png"].startswith("aspect ratio 0.49 (40x81)")
    assert "refs/small.png: too small: 31x64, the shorter side is under 32 pixels; left out" \
        in messages(ds)


def test_captions_from_the_txt_beside_a_picture_else_the_character(tmp_path):
    picture(tmp_path / "a.png", color=(1, 1, 1))
    picture(tmp_path / "b.png", color=(2, 2, 2))
    picture(tmp_path / "c.png", color=(3, 3, 3))
    picture(tmp_path / "d.png", color=(4, 4, 4))
    (tmp_path / "a.txt").write_text("  ohwx girl\nwaving,  in the rain \n", "utf-8")
    (tmp_path / "b.txt").write_text("a girl on a bike", "utf-8")
    (tmp_path / "c.txt").write_bytes("\ufeffohwxx is not the token".encode("utf-8"))
    (tmp_path / "d.txt").write_bytes(b"\xff\xfe latin-1 \xe9")
    ds = scan(tmp_path)
    captions = {Path(i.path).name: i.caption for i in ds.images}
    assert captions == {
        "a.png": "ohwx girl waving, in the rain",
        "b.png": "ohwx, a girl on a bike",
        "c.png": "ohwx, ohwxx is not the token",
        "d.png": "ohwx girl, curly red hair",
    }
    warned = messages(ds)
    assert "refs/b.txt: the caption does not name the token 'ohwx'; it is put in front" in warned
    assert "refs/c.txt: the caption does not name the token 'ohwx'; it is put in front" in warned
    assert "refs/d.txt: not UTF-8 text; the default caption is used" in warned
    assert not any(m.startswith("refs/a.txt") for m in warned)


def test_default_caption_without_class_or_description():
    assert D.default_caption("ohwx", None, "") == "ohwx"
    assert D.default_caption("ohwx", "girl", " red hair ") == "ohwx girl, red hair"
    assert D.names_token("photo of ohwx, smiling", "ohwx")
    assert not D.names_token("photo of ohwxgirl", "ohwx")


def test_duplicates_and_unread_formats_are_named(tmp_path):
    picture(tmp_path / "a.png")
    (tmp_path / "copy.png").write_bytes((tmp_path / "a.png").read_bytes())
    (tmp_path / "IMG_1.HEIC").write_bytes(b"heic")
    ds = scan(tmp_path, D.DataFilter(32, 0.5, 2.0, 1))
    assert len(ds.images) == 1
    assert {e.path: e.reason for e in ds.excluded} == {
        "refs/copy.png": "the same picture as refs/a.png",
        "refs/IMG_1.HEIC": ".heic pictures are not read"}


def test_too_few_pictures_warn_and_none_is_an_error(tmp_path):
    picture(tmp_path / "a.png")
    ds = scan(tmp_path)
    assert messages(ds)[-1].startswith("only 1 usable picture in 'refs'; 3 or more")
    empty = tmp_path / "empty"
    empty.mkdir()
    ds = scan(empty)
    assert not ds.ok and messages(ds, ERROR) == ["no usable pictures in 'refs'"]
    picture(empty / "small.png", (8, 8))
    assert messages(scan(empty), ERROR) == ["no usable pictures in 'refs' (1 left out)"]


def test_limits_on_count_and_size(tmp_path, monkeypatch):
    for i in range(3):
        picture(tmp_path / f"{i}.png", color=(i, 0, 0))
    monkeypatch.setattr(C, "MAX_TRAIN_IMAGES", 2)
    ds = scan(tmp_path)
    assert messages(ds, ERROR) == ["more than 2 pictures in 'refs'"] and ds.images == ()
    monkeypatch.setattr(C, "MAX_TRAIN_IMAGES", 1000)
    monkeypatch.setattr(C, "MAX_PICTURE_BYTES", 10)
    ds = scan(tmp_path)
    assert ds.images == () and len(ds.excluded) == 3
    assert "more than a picture storyboard trains on (10)" in ds.excluded[0].reason


def test_an_unreadable_folder_is_an_error(tmp_path):
    ds = scan(tmp_path / "missing")
    assert messages(ds, ERROR)[0].startswith("cannot read the folder 'refs'")


def test_a_link_to_a_picture_counts_and_a_dangling_one_is_named(tmp_path):
    real = picture(tmp_path / "elsewhere" / "real.png")
    folder = tmp_path / "refs"
    folder.mkdir()
    (folder / "linked.png").symlink_to(real)
    (folder / "gone.png").symlink_to(tmp_path / "nothing.png")
    ds = scan(folder, D.DataFilter(32, 0.5, 2.0, 1))
    assert [Path(i.path).name for i in ds.images] == ["linked.png"]
    assert ds.excluded[0].path == "refs/gone.png"
    assert ds.excluded[0].reason.startswith("cannot be read")


def test_a_changed_picture_is_read_again(tmp_path):
    path = picture(tmp_path / "a.png", (64, 64))
    first = scan(tmp_path, D.DataFilter(32, 0.5, 2.0, 1)).images[0]
    picture(path, (64, 48), color=(0, 0, 0))
    os.utime(path, ns=(1, 1))  # even with an mtime that went backwards
    second = scan(tmp_path, D.DataFilter(32, 0.5, 2.0, 1)).images[0]
    assert (second.width, second.height) == (64, 48) and second.sha256 != first.sha256
