"""Hostile model files: reads are bounded by the file's real size and sane limits, and refused with a clear error."""
from __future__ import annotations

import io
import json
import struct
import threading
import zipfile
from pathlib import Path
from typing import Callable

import psutil
import pytest
import torch
from safetensors.torch import save_file

from video_reward_lora.reward.files import ModelFileError, read_safetensors, read_torch_file
from video_reward_lora.reward.mps_convert import convert_mps_checkpoint, is_pickled_module
from video_reward_lora.training.lora.formats import Lora, LoraFormatError, LoraModule, read_lora
from video_reward_lora.training.lora.keymap import WAN
from video_reward_lora.training.lora.merge import BakeError, bake
from video_reward_lora.training.scaled_fp8 import read_dequantised

BOMB_BYTES = 512 << 20  # what the hostile zip entry inflates to; the file itself is about 0.5 MB
RSS_LIMIT = 200 << 20


def _write_zeros(archive: zipfile.ZipFile, name: str) -> None:
    """A deflated entry `name` that inflates to BOMB_BYTES of zeros, written in chunks."""
    chunk = bytes(16 << 20)
    info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w") as stream:
        for _ in range(BOMB_BYTES // len(chunk)):
            stream.write(chunk)


@pytest.fixture(scope="module")
def pickle_bomb(tmp_path_factory) -> Path:
    """An "MPS checkpoint" whose data.pkl inflates to 512 MiB."""
    path = tmp_path_factory.mktemp("bomb") / "MPS_overall_checkpoint.pth"
    with zipfile.ZipFile(path, "w", compresslevel=1) as archive:
        archive.writestr("archive/version", "3\n")
        _write_zeros(archive, "archive/data.pkl")
    return path


@pytest.fixture(scope="module")
def record_bomb(tmp_path_factory) -> Path:
    """A real torch.save file (one 4-element tensor, a small valid pickle) whose storage record inflates to 512 MiB."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buffer)
    path = tmp_path_factory.mktemp("bomb") / "weights.pth"
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w", compresslevel=1) as archive:
        for name in source.namelist():
            if name.endswith("/data/0"):
                _write_zeros(archive, name)
            else:
                archive.writestr(source.getinfo(name), source.read(name))
    return path


def _peak_rss_growth(action: Callable[[], None]) -> int:
    """How far the process's resident memory rose above its level at the start while `action` ran (sampled ~1 kHz)."""
    process = psutil.Process()
    start = peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            done.wait(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        action()
    finally:
        done.set()
        sampler.join()
    return max(peak, process.memory_info().rss) - start


def test_zip_bomb_offered_as_mps_checkpoint_is_refused_without_inflating(pickle_bomb, tmp_path):
    assert pickle_bomb.stat().st_size < 4 << 20
    message = (r"MPS_overall_checkpoint\.pth was refused: its pickle \(archive/data\.pkl\) declares 536,870,912 bytes, "
               r"over the 64 MiB")

    def refuse_everywhere() -> None:
        for read in (is_pickled_module, read_torch_file, lambda p: convert_mps_checkpoint(p, tmp_path / "out.safetensors")):
            with pytest.raises(ModelFileError, match=message):
                read(pickle_bomb)

    assert _peak_rss_growth(refuse_everywhere) < RSS_LIMIT
    assert not (tmp_path / "out.safetensors").exists()


def test_zip_bomb_in_a_storage_record_is_refused_before_torch_load(record_bomb):
    assert record_bomb.stat().st_size < 4 << 20

    def refuse() -> None:
        with pytest.raises(ModelFileError, match=r"weights\.pth was refused: its entries declare 536,87\d,\d{3} bytes, "
                                                 r"far more than the file's"):
            read_torch_file(record_bomb)

    assert _peak_rss_growth(refuse) < RSS_LIMIT


def _lying_header(path: Path, length: int, header: bytes = b"{}") -> Path:
    path.write_bytes(struct.pack("<Q", length) + header + bytes(64))
    return path


def test_safetensors_header_claiming_2_62_bytes_is_refused(tmp_path):
    path = _lying_header(tmp_path / "liar.safetensors", 2 ** 62)
    size = path.stat().st_size
    claim = rf"liar\.safetensors is not a readable safetensors file \(truncated or corrupt\?\): its header claims " \
            rf"{2 ** 62} bytes in a file of {size} bytes"
    with pytest.raises(BakeError, match=claim):
        bake(path, Lora(WAN, {"head.head": LoraModule(torch.ones(1, 2), torch.ones(2, 1), 1.0)}), 1.0, tmp_path / "out.safetensors")
    with pytest.raises(ModelFileError, match=claim):
        read_safetensors(path)
    with pytest.raises(ModelFileError, match="Wan expert: " + claim):
        read_dequantised(path, torch.float32, "Wan expert")
    lora = _lying_header(tmp_path / "lora.safetensors", 2 ** 62)
    with pytest.raises(LoraFormatError, match=r"lora\.safetensors .*header claims"):
        read_lora(lora)
    assert not (tmp_path / "out.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_safetensors_tensor_outside_the_file_is_refused(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.ones(2, 2), "b": torch.ones(3)}, good)
    length = struct.unpack("<Q", good.read_bytes()[:8])[0]
    header = json.loads(good.read_bytes()[8 : 8 + length])
    cases = {
        "outside": ({"b": {**header["b"], "data_offsets": [16, 16 + 2 ** 40]}}, r"tensor b claims bytes 16\.\.1099511627792 "
                                                                                 r"of the data, but the file holds 28$"),
        "shape": ({"b": {**header["b"], "shape": [3000]}}, r"tensor b \(F32, shape \[3000\]\) does not match its 12 bytes$"),
        "malformed": ({"b": {"dtype": "F32"}}, r"the header entry of b is malformed"),
    }
    for name, (change, message) in cases.items():
        blob = json.dumps({**header, **change}).encode()
        blob += b" " * (-len(blob) % 8)
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(struct.pack("<Q", len(blob)) + blob + good.read_bytes()[8 + length :])
        refusal = rf"^{name}\.safetensors is not a readable safetensors file \(truncated or corrupt\?\): {message}"
        with pytest.raises(ModelFileError, match=refusal):
            read_safetensors(path)
        with pytest.raises(BakeError, match=refusal):
            bake(path, Lora(WAN, {"a": LoraModule(torch.ones(1, 2), torch.ones(2, 1), 1.0)}), 1.0, tmp_path / "out.safetensors")
