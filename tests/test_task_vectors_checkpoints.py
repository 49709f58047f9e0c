"""task_vectors checkpoints (whole pickled modules), read without executing anything, converted, and found."""
import hashlib
import pickle
import pickletools
import zipfile
from pathlib import Path

import pytest
import torch

from src.checkpoints import (CheckpointError, convert_folder, find_checkpoints, load_head, load_state_dict, resolve,
                             save_state_dict)
from src.modeling import ImageEncoder
from tests.fixtures import checkpoints as fx


@pytest.fixture(scope="module")
def encoder():
    return fx.seeded_encoder(0)


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _globals_in(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    ops = list(pickletools.genops(data))
    names = set()
    for i, (op, arg, _) in enumerate(ops):
        if op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            names.add(f"{ops[i - 2][1]}.{ops[i - 1][1]}")
    return names


@pytest.mark.parametrize("style", ["modern", "202"])
@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle"])
def test_pickled_encoder_loads_exact_tensors_in_registration_order(tmp_path, encoder, images, style, fmt):
    path = tmp_path / "zeroshot.pt"
    if style == "202":
        fx.openclip202_encoder_pickle(path, encoder, fmt=fmt)
        pickled_order = list(fx.openclip202_encoder(encoder).state_dict())
    else:
        fx.modern_encoder_pickle(path, encoder, fmt=fmt)
        pickled_order = list(encoder.state_dict())
    loaded = load_state_dict(path)
    assert list(loaded) == pickled_order
    reference = encoder.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) and loaded[k].dtype == reference[k].dtype for k in reference)

    fresh = ImageEncoder("demo", state_dict=loaded).eval()
    with torch.no_grad():
        assert torch.equal(fresh(images), encoder(images))


def test_202_order_is_attn_before_ln_1(tmp_path, encoder):
    keys = list(load_state_dict(fx.openclip202_encoder_pickle(tmp_path / "z.pt", encoder)))
    block = [k.removeprefix("model.visual.transformer.resblocks.0.") for k in keys
             if k.startswith("model.visual.transformer.resblocks.0.")]
    assert block[:6] == ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
                         "ln_1.weight", "ln_1.bias"]
    assert keys[:3] == ["model.positional_embedding", "model.text_projection", "model.logit_scale"]
    assert keys[-3:] == ["model.token_embedding.weight", "model.ln_final.weight", "model.ln_final.bias"]


def test_202_fixture_is_what_plain_loading_fails_on(tmp_path, encoder):
    path = fx.openclip202_encoder_pickle(tmp_path / "z.pt", encoder)
    names = _globals_in(path)
    assert {"src.modeling.ImageEncoder", "open_clip.model.VisualTransformer", "open_clip.model.Transformer",
            "open_clip.model.ResidualAttentionBlock", "open_clip.model.LayerNorm",
            "open_clip.transform._convert_to_rgb", "torchvision.transforms.transforms.Compose"} <= names
    with pytest.raises(pickle.UnpicklingError, match="src.modeling.ImageEncoder"):
        torch.load(path, weights_only=True)
    with pytest.raises(AttributeError, match="VisualTransformer"):
        torch.load(path, weights_only=False)


@pytest.mark.parametrize("attack", ["os.system", "subprocess", "eval", "getattr", "module", "nested"])
def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path, attack):
    marker = tmp_path / "pwned"
    path = fx.evil_pickle(tmp_path / "evil.pt", attack, marker)
    expected = {"os.system": "posix.system", "subprocess": "subprocess.call", "eval": "builtins.eval",
                "getattr": "builtins.getattr", "module": "posix.system", "nested": "posix.system"}[attack]
    for load in (load_state_dict, load_head):
        with pytest.raises(CheckpointError) as info:
            load(path)
        assert str(path) in str(info.value) and expected in str(info.value)
    with pytest.raises(CheckpointError):
        convert_folder(tmp_path)
    assert not marker.exists()
    assert not path.with_suffix(".safetensors").exists()


def test_pickled_head(tmp_path):
    weights = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    head = load_head(fx.head_pickle(tmp_path / "head_MNIST.pt", weights))
    assert torch.equal(head.weight.data, weights) and torch.equal(head.bias.data, torch.zeros(5))
    assert head.normalize is True
    assert load_head(fx.head_pickle(tmp_path / "head_raw.pt", weights, normalize=False)).normalize is False
    features = torch.randn(2, 64)
    logits = head(features)
    expected = (features / features.norm(dim=-1, keepdim=True)) @ weights.T
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)


def test_head_from_state_dict_and_wrong_file(tmp_path, encoder):
    weights = torch.randn(3, 64)
    save_state_dict({"weight": weights, "bias": torch.ones(3)}, tmp_path / "h.safetensors")
    head = load_head(tmp_path / "h.safetensors")
    assert torch.equal(head.weight.data, weights) and torch.equal(head.bias.data, torch.ones(3))
    fx.modern_encoder_pickle(tmp_path / "zeroshot.pt", encoder)
    with pytest.raises(CheckpointError, match="not a src.modeling.ClassificationHead"):
        load_head(tmp_path / "zeroshot.pt")


def test_convert_writes_safetensors_and_sums_and_later_loads_use_them(tmp_path, monkeypatch):
    tasks = ["MNIST", "SVHN"]
    made = fx.task_vectors_tree(tmp_path, tasks)
    base = tmp_path / "demo"
    pickles = [base / "zeroshot.pt", *(base / t / "finetuned.pt" for t in tasks),
               *(base / f"head_{t}.pt" for t in tasks)]
    before = {p: load_state_dict(p) for p in pickles}
    logged = []
    converted = convert_folder(tmp_path, log=logged.append)
    assert converted == [p.with_suffix(".safetensors") for p in sorted(pickles)]

    sums = dict(reversed(line.split("  ")) for line in (tmp_path / "SHA256SUMS").read_text().splitlines())
    assert len(sums) == 2 * len(pickles)
    for rel, digest in sums.items():
        assert hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest() == digest

    # Later loads read the safetensors file: prove it by making the pickle unreadable to the unpickler.
    monkeypatch.setattr("src.unpickler.Unpickler.find_class", lambda *a: pytest.fail("pickle was read"))
    for p in pickles:
        assert resolve(p) == p.with_suffix(".safetensors")
        after = load_state_dict(p)
        assert list(after) == list(before[p]) and all(torch.equal(after[k], before[p][k]) for k in after)
    head = load_head(base / "head_SVHN.pt")
    assert torch.equal(head.weight.data, made["heads"]["SVHN"]) and head.normalize is True
    monkeypatch.undo()

    logged.clear()
    convert_folder(tmp_path, log=logged.append)
    assert sum(m.startswith("up to date") for m in logged) == len(pickles)


def test_stale_conversion_is_ignored_and_missing_pickle_falls_back(tmp_path, encoder):
    path = fx.modern_encoder_pickle(tmp_path / "finetuned.pt", encoder)
    convert_folder(tmp_path, log=lambda _: None)
    other = fx.seeded_encoder(7)
    fx.modern_encoder_pickle(path, other)  # the pickle changes after conversion
    with pytest.raises(CheckpointError, match="sha256 differs from the one .*SHA256SUMS"):
        load_state_dict(path)
    (tmp_path / "SHA256SUMS").unlink()  # without the list, the changed pickle is read with a warning
    with pytest.warns(UserWarning, match="sha256 differs"):
        loaded = load_state_dict(path)
    assert torch.equal(loaded["model.visual.proj"], other.state_dict()["model.visual.proj"])

    convert_folder(tmp_path, log=lambda _: None)
    path.unlink()  # users may delete the pickles once converted
    assert torch.equal(load_state_dict(path)["model.visual.proj"], other.state_dict()["model.visual.proj"])


def test_find_checkpoints_task_vectors_layout(tmp_path):
    fx.task_vectors_tree(tmp_path, ["MNIST", "DTD"])
    found = find_checkpoints(tmp_path, "demo", ["MNIST", "DTD"])
    assert found.family == "task_vectors"
    assert found.pretrained == tmp_path / "demo" / "zeroshot.pt"
    assert found.finetuned == {t: tmp_path / "demo" / t / "finetuned.pt" for t in ["MNIST", "DTD"]}
    assert found.heads == {t: tmp_path / "demo" / f"head_{t}.pt" for t in ["MNIST", "DTD"]}
    assert find_checkpoints(tmp_path, "demo", ["MNIST"], family="demo").family == "demo"

    (tmp_path / "demo" / "DTD").rename(tmp_path / "demo" / "DTDVal")  # where task_vectors' finetune.py writes
    assert find_checkpoints(tmp_path, "demo", ["DTD"]).finetuned["DTD"] == tmp_path / "demo" / "DTDVal" / "finetuned.pt"


def test_find_checkpoints_lists_every_missing_file_at_once(tmp_path):
    (tmp_path / "ViT-B-32" / "MNIST").mkdir(parents=True)
    (tmp_path / "ViT-B-32" / "MNIST" / "finetuned.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError) as info:
        find_checkpoints(tmp_path, "ViT-B-32", ["SUN397", "MNIST", "DTD"])
    message = str(info.value)
    for missing in ["ViT-B-32/zeroshot.pt", "ViT-B-32/SUN397/finetuned.pt", "ViT-B-32/DTD/finetuned.pt"]:
        assert str(tmp_path / missing) in message
    assert "MNIST" not in message.split("missing")[1].split("See")[0]
    assert "3 checkpoint file(s) missing" in message and "Getting the checkpoints and data" in message


def test_architecture_mismatch_names_both_files_and_first_key(tmp_path, encoder):
    pretrained_path = fx.modern_encoder_pickle(tmp_path / "zeroshot.pt", encoder)
    pretrained = load_state_dict(pretrained_path)
    other = dict(pretrained)
    other["model.visual.conv1.weight"] = torch.zeros(64, 3, 16, 16)  # a B/16-style patch size
    save_state_dict(other, tmp_path / "finetuned.pt")
    with pytest.raises(CheckpointError) as info:
        load_state_dict(tmp_path / "finetuned.pt", like=pretrained, like_name=str(pretrained_path))
    message = str(info.value)
    assert str(tmp_path / "finetuned.pt") in message and str(pretrained_path) in message
    assert "model.visual.conv1.weight (64, 3, 16, 16) vs (64, 3, 8, 8)" in message
