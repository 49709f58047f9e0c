"""Fault injection on checkpoint files: bombs, truncation and bit flips are refused with the file named, before any
large allocation, instead of loading silently or failing later inside torch."""
import io
import resource
import struct
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from src.checkpoints import CheckpointError, convert_folder, load_head, load_state_dict
from tests.fixtures import checkpoints as fx


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("side", [20_000, 1_000_000])
def test_a_broadcast_view_larger_than_its_storage_is_refused_without_materialising_it(tmp_path, side):
    path = tmp_path / "view.pt"
    torch.save({"w": torch.zeros(1).expand(side, side)}, path)
    assert path.stat().st_size < 4096
    before = _peak_rss_mb()
    with pytest.raises(CheckpointError, match=r"view.pt: tensor 'w' of shape \(\d+, \d+\) is a view over 4 bytes"):
        load_state_dict(path)
    assert _peak_rss_mb() - before < 200  # materialising the 20000² view alone would take 1.6 GB


def test_a_compressed_record_is_refused_before_it_is_inflated(tmp_path):
    plain = io.BytesIO()
    torch.save({"w": torch.ones(3)}, plain)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(io.BytesIO(plain.getvalue())) as src, zipfile.ZipFile(bomb, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data += b"\x00" * (64 << 20)  # trailing bytes a reader would inflate: 64 MiB from ~64 kB
            out.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match=r"bomb.pt: record '.*data.pkl' is compressed"):
        load_state_dict(bomb)


def test_a_record_claiming_more_bytes_than_the_file_has_is_refused(tmp_path):
    path = tmp_path / "oversized.pt"
    torch.save({"w": torch.ones(3)}, path)
    blob = bytearray(path.read_bytes())
    # Patch the central directory entry of the tensor record: compressed and uncompressed sizes to 1 GB.
    at = blob.index(b"PK\x01\x02", blob.index(b"PK\x01\x02") + 1)
    while not blob[at + 46:at + 46 + struct.unpack_from("<H", blob, at + 28)[0]].endswith(b"data/0"):
        at = blob.index(b"PK\x01\x02", at + 1)
    struct.pack_into("<II", blob, at + 20, 1 << 30, 1 << 30)
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="oversized.pt: .*(beyond the end of the|truncated or corrupt)"):
        load_state_dict(path)


def test_an_empty_state_dict_is_refused(tmp_path):
    torch.save({}, tmp_path / "empty_torch.pt")
    save_file({}, str(tmp_path / "empty_safetensors.safetensors"))
    for name in ("empty_torch.pt", "empty_safetensors.safetensors"):
        with pytest.raises(CheckpointError, match=f"{name}: holds no tensors"):
            load_state_dict(tmp_path / name)


@pytest.mark.parametrize("kind", ["state_dict", "module_pickle", "head"])
def test_a_truncated_checkpoint_is_called_truncated(tmp_path, kind):
    path = tmp_path / "ckpt.pt"
    if kind == "state_dict":
        torch.save(fx.seeded_encoder(0).state_dict(), path)
    elif kind == "module_pickle":
        fx.modern_encoder_pickle(path, fx.seeded_encoder(0))
    else:
        fx.head_pickle(path, torch.randn(5, 8))
    blob = path.read_bytes()
    path.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(CheckpointError, match="ckpt.pt: .*truncated or corrupt"):
        (load_head if kind == "head" else load_state_dict)(path)


def test_a_flipped_bit_in_a_torch_file_fails_its_crc(tmp_path):
    path = tmp_path / "flipped.pt"
    state = fx.seeded_encoder(0).state_dict()
    torch.save(state, path)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # inside the tensor data
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="flipped.pt: corrupt: record '.*' fails its CRC-32 check"):
        load_state_dict(path)


def test_a_flipped_bit_in_a_converted_file_fails_the_sha256sums_check(tmp_path):
    (tmp_path / "task").mkdir()
    fx.modern_encoder_pickle(tmp_path / "task" / "finetuned.pt", fx.seeded_encoder(0))
    convert_folder(tmp_path, log=lambda _: None)
    converted = tmp_path / "task" / "finetuned.safetensors"
    reference = {k: v.clone() for k, v in load_state_dict(tmp_path / "task" / "finetuned.pt").items()}  # unmapped
    blob = bytearray(converted.read_bytes())
    blob[-100] ^= 0x01  # safetensors has no checksum of its own
    converted.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="finetuned.safetensors: sha256 differs from the one .*SHA256SUMS"):
        load_state_dict(tmp_path / "task" / "finetuned.pt")
    (tmp_path / "SHA256SUMS").unlink()  # without the list the flip is invisible: the reason the list is checked
    flipped = load_state_dict(tmp_path / "task" / "finetuned.pt")
    assert any(not torch.equal(flipped[k], reference[k]) for k in reference)
