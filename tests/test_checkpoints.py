import os
import pickle

import pytest
import torch

from src.checkpoints import CheckpointError, load_state_dict, save_state_dict


def _sd(width=4):
    g = torch.Generator().manual_seed(1)
    return {"model.visual.proj": torch.randn(width, 3, generator=g), "model.visual.ln_post.bias": torch.randn(3, generator=g)}


@pytest.mark.parametrize("name", ["m.pt", "m.safetensors", "m.bin"])
def test_roundtrip_exact(tmp_path, name):
    sd = _sd()
    save_state_dict(sd, tmp_path / name)
    loaded = load_state_dict(tmp_path / name)
    assert list(loaded) == list(sd)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_the_same_tensors_give_the_same_pt_bytes_under_any_file_name(tmp_path):
    # (.safetensors files are not byte-stable: the library writes the metadata map in a random order.)
    save_state_dict(_sd(), tmp_path / "m.pt")
    save_state_dict(_sd(), tmp_path / "other" / "m.pt")
    assert (tmp_path / "m.pt").read_bytes() == (tmp_path / "other" / "m.pt").read_bytes()


def test_legacy_torch_format(tmp_path):
    sd = _sd()
    torch.save(sd, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    loaded = load_state_dict(tmp_path / "old.pt")
    assert torch.equal(loaded["model.visual.proj"], sd["model.visual.proj"])


def _error(path, **kw):
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path, **kw)
    assert str(path) in str(info.value)
    return str(info.value)


def test_missing_file(tmp_path):
    assert "not found" in _error(tmp_path / "nope.pt")


@pytest.mark.parametrize("name", ["m.pt", "m.safetensors"])
def test_truncated_file(tmp_path, name):
    save_state_dict({"w": torch.randn(1000)}, tmp_path / name)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    assert "truncated" in _error(tmp_path / name)


def test_text_file_renamed_pt(tmp_path):
    (tmp_path / "notes.pt").write_text("these are not weights, just a text file\n")
    assert "not a checkpoint" in _error(tmp_path / "notes.pt")


def test_other_architecture_lists_keys(tmp_path):
    save_state_dict({"model.visual.proj": torch.zeros(8, 3), "model.visual.extra": torch.zeros(1)}, tmp_path / "b16.pt")
    msg = _error(tmp_path / "b16.pt", like=_sd(), like_name="zeroshot.pt")
    assert "zeroshot.pt" in msg
    assert "model.visual.ln_post.bias" in msg  # missing
    assert "model.visual.extra" in msg  # unexpected
    assert "model.visual.proj (8, 3) vs (4, 3)" in msg  # shape


def test_nan_weight_named(tmp_path):
    sd = _sd()
    sd["model.visual.proj"][1, 2] = float("nan")
    save_state_dict(sd, tmp_path / "nan.pt")
    assert "model.visual.proj" in _error(tmp_path / "nan.pt")


def test_non_state_dict_object(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    assert "not a state dict" in _error(tmp_path / "list.pt")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_with_code_is_refused_unexecuted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pt", "wb") as f:
        pickle.dump({"w": _Exploit()}, f, protocol=2)
    _error(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
