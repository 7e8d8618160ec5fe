"""LoRA and checkpoint files from other people, built to hurt (issue 14, classes 5 and 11): each
is refused with a LoraFormatError / a story problem that names the file and says what is wrong,
before more than its header or its zip directory is read, and never with a traceback.

Every file here is crafted by hand: safetensors headers written byte by byte, zips whose
directory lies about sizes, pickles that ask for ``os.system``. Nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT, run_cli  # noqa: E402

from storyboard import weightfiles  # noqa: E402
from storyboard.loras import LoraFormatError, inspect_lora  # noqa: E402
from storyboard.plan.compile import checkpoint_keys  # noqa: E402

MODULE = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


# --- crafting files --------------------------------------------------------------------------


def safetensors_bytes(header: bytes, *, length: int | None = None, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def lora_header(extra: dict | None = None, metadata: dict | None = None) -> bytes:
    """A header of one rank-1 layer (2 x 1 and 1 x 2 F32: 16 bytes of data)."""
    header = {f"{MODULE}.lora_A.weight": {"dtype": "F32", "shape": [1, 2],
                                          "data_offsets": [0, 8]},
              f"{MODULE}.lora_B.weight": {"dtype": "F32", "shape": [2, 1],
                                          "data_offsets": [8, 16]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    header.update(extra or {})
    return json.dumps(header).encode()


class Counted(io.BytesIO):
    """A file in memory that counts the bytes read from it."""

    taken = 0

    def read(self, n=-1):
        data = super().read(n)
        self.taken += len(data)
        return data


def torch_zip(path: Path, state: dict) -> Path:
    torch.save(state, path)
    return path


def deflate_bomb(path: Path, unpacked: int) -> Path:
    """A torch zip whose first tensor record is deflated zeros: ``unpacked`` bytes from about a
    thousandth of that, written in 1 MiB pieces."""
    source = io.BytesIO()
    torch.save({f"{MODULE}.lora_A.weight": torch.zeros(1, 2)}, source)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data/0"):
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with out.open(entry, "w", force_zip64=True) as fh:
                    fh.write(data)
                    for _ in range(unpacked >> 20):
                        fh.write(bytes(1 << 20))
            else:
                out.writestr(info, data)
    return path


def forge_declared_size(path: Path, entry_suffix: str, size: int) -> Path:
    """Rewrite the central directory's uncompressed size of one entry (what torch and zipfile
    both believe) without touching its data."""
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", raw, at + 28)[0]
        name = bytes(raw[at + 46:at + 46 + name_len]).decode()
        if name.endswith(entry_suffix):
            struct.pack_into("<L", raw, at + 24, size)
            break
        at = raw.find(b"PK\x01\x02", at + 4)
    else:
        raise AssertionError(f"no entry {entry_suffix}")
    path.write_bytes(bytes(raw))
    return path


def refused(path: Path, match: str) -> str:
    with pytest.raises(LoraFormatError, match=match) as info:
        inspect_lora(path)
    assert str(path) in str(info.value)
    return str(info.value)


# --- safetensors headers ---------------------------------------------------------------------


def test_a_header_length_of_2_to_the_62_is_refused_after_reading_8_bytes(tmp_path):
    content = safetensors_bytes(b"{}", length=2**62)
    refused(write(tmp_path / "huge.safetensors", content),
            r"header length 4,611,686,018,427,387,904 bytes is over the 100,000,000-byte limit")
    fh = Counted(content)
    with pytest.raises(weightfiles.WeightFileError):
        weightfiles.safetensors_header(fh, tmp_path / "x", len(content))
    assert fh.taken == 8


def test_a_header_longer_than_the_file_is_refused(tmp_path):
    refused(write(tmp_path / "short.safetensors", safetensors_bytes(b'{"a": 1}', length=10_000)),
            r"header length 10,000 bytes runs past the end of the file \(16 bytes\)")


def test_a_header_that_is_not_json_or_not_an_object_is_refused(tmp_path):
    refused(write(tmp_path / "text.safetensors", safetensors_bytes(b"{not json}")),
            "header is not valid JSON")
    refused(write(tmp_path / "list.safetensors", safetensors_bytes(b"[1, 2, 3]")),
            "header is a JSON list, not an object")
    refused(write(tmp_path / "bytes.safetensors", safetensors_bytes(b"{\xff\xfe}")),
            "header is not UTF-8")


def test_offsets_outside_the_file_or_not_matching_the_shape_are_refused(tmp_path):
    beyond = lora_header({f"{MODULE}.lora_B.weight": {"dtype": "F32", "shape": [2, 1],
                                                      "data_offsets": [8, 4_000_000]}})
    refused(write(tmp_path / "beyond.safetensors", safetensors_bytes(beyond, data=bytes(16))),
            r"lora_B.weight' lies at bytes 8..4,000,000, outside the 16 bytes of data")
    wrong = lora_header({f"{MODULE}.lora_B.weight": {"dtype": "F32", "shape": [200, 1],
                                                     "data_offsets": [8, 16]}})
    refused(write(tmp_path / "shape.safetensors", safetensors_bytes(wrong, data=bytes(16))),
            "needs 800 bytes, its offsets give 8")
    overlap = lora_header({f"{MODULE}.lora_B.weight": {"dtype": "F32", "shape": [2, 1],
                                                       "data_offsets": [0, 8]}})
    refused(write(tmp_path / "overlap.safetensors", safetensors_bytes(overlap, data=bytes(16))),
            "tensors overlap or leave a gap")


def test_deeply_nested_json_is_refused_without_a_recursion_error(tmp_path):
    deep = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = write(tmp_path / "deep.safetensors", safetensors_bytes(deep))
    refused(path, "header nests too deeply")
    assert checkpoint_keys(path) is None  # the torch-free reader `validate` uses


def test_deeply_nested_or_odd_lora_metadata_is_refused(tmp_path):
    data = bytes(16)
    deep = lora_header(metadata={"lora_adapter_metadata": "[" * 100_000 + "]" * 100_000})
    refused(write(tmp_path / "deep.safetensors", safetensors_bytes(deep, data=data)),
            "its lora_adapter_metadata nests too deeply")
    text = lora_header(metadata={"lora_adapter_metadata": json.dumps(
        {"unet.lora_alpha": "eight"})})
    refused(write(tmp_path / "text.safetensors", safetensors_bytes(text, data=data)),
            "lora_alpha is not a number")
    slow = lora_header(metadata={"lora_adapter_metadata": json.dumps(
        {"unet.lora_alpha": 1, "unet.alpha_pattern": {"(.*)*x": 2}})})
    refused(write(tmp_path / "slow.safetensors", safetensors_bytes(slow, data=data)),
            "repeats a group")
    bad = lora_header(metadata={"format": 3})
    refused(write(tmp_path / "meta.safetensors", safetensors_bytes(bad, data=data)),
            "__metadata__ is not a map of strings")


def test_a_huge_adapter_config_beside_a_peft_file_is_not_read(tmp_path):
    from safetensors.torch import save_file

    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({f"base_model.model.{module}.lora_A.weight": torch.zeros(1, 2),
               f"base_model.model.{module}.lora_B.weight": torch.zeros(2, 1)},
              str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_bytes(b" " * (2 << 20) + b"{}")
    with pytest.raises(LoraFormatError, match=r"adapter_config.json: is over 1,048,576 bytes"):
        inspect_lora(tmp_path / "adapter_model.safetensors")


# --- pickles ---------------------------------------------------------------------------------


def test_a_zip_bomb_is_refused_from_its_directory_alone(tmp_path, monkeypatch):
    """64 MiB of deflated zeros in a ~64 KiB .ckpt: refused from the zip directory, reading no
    entry; torch.load is never called."""
    path = deflate_bomb(tmp_path / "bomb.ckpt", 64 << 20)
    assert path.stat().st_size < 1 << 20

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_load)
    refused(path, r"zip entry '\w+/data/0' would unpack [\d,]+ bytes into 67,108,872: a zip bomb")
    content = path.read_bytes()
    fh = Counted(content)
    with pytest.raises(weightfiles.WeightFileError, match="zip bomb"):
        weightfiles.check_torch_zip(fh, path, len(content))
    # The end records (at most 64 KiB and a bit) and the directory: never the 64 MiB.
    assert fh.taken <= (70 << 10) + 4096


def test_a_zip_directory_that_lies_about_sizes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    forged = forge_declared_size(deflate_bomb(tmp_path / "forged.ckpt", 1 << 20),
                                 "/data/0", 3_000_000_000)
    refused(forged, "into 3,000,000,000: a zip bomb")
    stored = forge_declared_size(
        torch_zip(tmp_path / "stored.ckpt", {f"{MODULE}.lora_A.weight": torch.zeros(1, 2)}),
        "/data.pkl", 2_000_000_000)
    refused(stored, r"zip entry 'stored/data.pkl' is stored as [\d,]+ bytes but declares "
                    "2,000,000,000")


def test_legacy_and_foreign_pickles_are_refused(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({f"{MODULE}.lora_A.weight": torch.zeros(1, 2)}, legacy,
               _use_new_zipfile_serialization=False)
    refused(legacy, "legacy PyTorch pickle")
    refused(write(tmp_path / "junk.bin", b"just some bytes"), "not the zip archive torch.save")
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as z:
        z.writestr("readme.txt", "hello")
    refused(tmp_path / "other.pt", "has no data.pkl")


class System:
    def __reduce__(self):
        return (os.system, ("echo the pickle ran > pwned",))


def test_a_pickle_asking_for_os_system_is_refused_by_name(tmp_path):
    path = torch_zip(tmp_path / "evil.pt", {f"{MODULE}.lora_A.weight": System()})
    message = refused(path, "refused")
    assert "the file asks to run or construct `os.system`, which a weights file never needs" \
        in message
    assert "nothing in it was run" in message and "Weights only load failed" not in message
    assert not (tmp_path / "pwned").exists()


def test_pickle_refusal_names_the_global_torch_names():
    blocked = ("Weights only load failed. ...\n\n\nTrying to load unsupported GLOBAL "
               "posix.system whose module posix is blocked.\n\nCheck the documentation of ...")
    unlisted = ("Weights only load failed. This file can still be loaded ...\n\tWeightsUnpickler "
                "error: Unsupported global: GLOBAL __main__.Payload was not an allowed global by "
                "default. Please use `torch.serialization.add_safe_globals([Payload])` ...")
    other = ("Weights only load failed. ...\nPlease file an issue ...: WeightsUnpickler error: "
             "\n\nUnsupported operand 149\n\nCheck the documentation of torch.load ...")
    assert "`os.system`" in weightfiles.pickle_refusal(blocked)
    assert "`__main__.Payload`" in weightfiles.pickle_refusal(unlisted)
    assert "(Unsupported operand 149)" in weightfiles.pickle_refusal(other)


# --- not regular files -----------------------------------------------------------------------


def _inspect_in_a_subprocess(path: Path) -> str:
    """inspect_lora in another process, so that a regression that blocks on a FIFO or reads
    /dev/zero forever fails this test instead of hanging the suite."""
    code = ("import sys\nfrom storyboard.loras import LoraFormatError, inspect_lora\n"
            "try:\n    inspect_lora(sys.argv[1])\nexcept LoraFormatError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out.stdout + out.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_or_a_device_as_a_lora_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    assert "is a named pipe (FIFO), not a regular file" in _inspect_in_a_subprocess(fifo)
    if Path("/dev/zero").exists():
        zero = tmp_path / "zero.ckpt"
        zero.symlink_to("/dev/zero")
        assert "is a device, not a regular file" in _inspect_in_a_subprocess(zero)
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    refused(folder, "is a folder, not a file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_validate_names_a_fifo_lora_or_model_for_what_it_is(tmp_path):
    os.mkfifo(tmp_path / "pipe.safetensors")
    os.mkfifo(tmp_path / "model.safetensors")
    (tmp_path / "story.yaml").write_text(
        "version: 1\nmodel: {path: model.safetensors, family: sdxl}\n"
        "characters:\n  bob: {token: bob, loras: [pipe.safetensors]}\n"
        "panels:\n  - {id: a, prompt: a cat, characters: [bob]}\n", encoding="utf-8")
    result = run_cli("validate", str(tmp_path / "story.yaml"))
    assert result.exit_code == 2, result.output
    assert "LoRA file 'pipe.safetensors': is a named pipe (FIFO), not a regular file" in result.output
    assert "model 'model.safetensors': is a named pipe (FIFO), not a regular file" in result.output
    assert "not found" not in result.output


# --- what the command line shows -------------------------------------------------------------


def test_lora_inspect_shows_one_line_and_exits_2(tmp_path):
    result = run_cli("lora", "inspect", str(deflate_bomb(tmp_path / "bomb.ckpt", 8 << 20)))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and "a zip bomb" in result.output


@pytest.mark.usefixtures("fresh_cache")
def test_a_checkpoint_with_a_deeply_nested_header_is_no_traceback(tmp_path):
    """`validate` reads a checkpoint's header only to guess its family (it used to raise
    RecursionError here); `build` refuses the file before diffusers sees it."""
    deep = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    write(tmp_path / "deep.safetensors", safetensors_bytes(deep))
    story = tmp_path / "story.yaml"
    story.write_text("version: 1\nmodel: {path: deep.safetensors}\n"
                     "defaults: {steps: 1, width: 64, height: 64}\n"
                     "panels:\n  - {id: a, prompt: a cat}\n", encoding="utf-8")
    assert run_cli("validate", str(story)).exit_code == 0
    result = run_cli("build", "-q", str(story), "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "deep.safetensors is unreadable: not a readable .safetensors file: header nests " \
           "too deeply" in result.output
    assert "hf download" not in result.output


@pytest.mark.usefixtures("fresh_cache")
def test_build_refuses_hostile_loras_before_rendering(tmp_path):
    deep = lora_header(metadata={"lora_adapter_metadata": "[" * 100_000 + "]" * 100_000})
    write(tmp_path / "deep.safetensors", safetensors_bytes(deep, data=bytes(16)))
    deflate_bomb(tmp_path / "bomb.ckpt", 8 << 20)
    (tmp_path / "story.yaml").write_text(
        "version: 1\nmodel: tiny-sdxl\ndefaults: {steps: 1, width: 64, height: 64}\n"
        "characters:\n  bob: {token: bob, loras: [deep.safetensors, bomb.ckpt]}\n"
        "panels:\n  - {id: a, prompt: a cat, characters: [bob]}\n", encoding="utf-8")
    result = run_cli("build", "-q", str(tmp_path / "story.yaml"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "deep.safetensors cannot be used: its lora_adapter_metadata nests too deeply" \
        in result.output
    assert "bomb.ckpt cannot be used: zip entry 'archive/data/0' would unpack" in result.output
    assert not (tmp_path / "out" / "panels" / "a.png").exists()
