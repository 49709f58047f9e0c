"""Hugging Face CLIP folders mapped to open_clip: checked against the real transformers classes."""
import pytest
import torch

from src import hf_clip
from src.checkpoints import CheckpointError, find_checkpoints, load_state_dict
from src.modeling import ImageEncoder
from tests.fixtures import checkpoints as fx


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    model = fx.hf_clip_model(seed=0, vision_only=False)
    return model, fx.hf_clip_folder(tmp_path_factory.mktemp("hf") / "openai", model)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    model = fx.hf_clip_model(seed=1, vision_only=True)
    return model, fx.hf_clip_folder(tmp_path_factory.mktemp("hf") / "tanganke", model)


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _hf_features(vision_model, projection_weight, pixels):
    """FusionBench's image embedding: post-LayerNorm CLS pooler output, then the pretrained visual projection."""
    with torch.no_grad():
        return vision_model(pixel_values=pixels).pooler_output @ projection_weight.T


@pytest.mark.parametrize("which", ["pretrained", "finetuned"])
def test_mapped_encoder_gives_the_hf_features(request, pretrained, pixels, which):
    hf_model, folder = request.getfixturevalue(which)
    clip, clip_folder = pretrained
    encoder = ImageEncoder("demo")
    encoder.load_vision_state_dict(load_state_dict(folder), proj=hf_clip.projection(clip_folder))
    with torch.no_grad():
        ours = encoder.eval()(pixels)
    vision = hf_model.vision_model if which == "pretrained" else hf_model
    expected = _hf_features(vision, clip.visual_projection.weight, pixels)
    assert ours.shape == expected.shape == (3, 64)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert (ours - expected).abs().max() < 1e-3 * expected.abs().max()  # and not trivially small features


def test_mapping_by_hand_and_key_order(finetuned):
    hf_model, folder = finetuned
    mapped = load_state_dict(folder)
    hf = hf_model.state_dict()
    in_proj = mapped["model.visual.transformer.resblocks.2.attn.in_proj_weight"]
    assert in_proj.shape == (192, 64)
    assert torch.equal(in_proj[:64], hf["encoder.layers.2.self_attn.q_proj.weight"])
    assert torch.equal(in_proj[64:128], hf["encoder.layers.2.self_attn.k_proj.weight"])
    assert torch.equal(in_proj[128:], hf["encoder.layers.2.self_attn.v_proj.weight"])
    assert torch.equal(mapped["model.visual.transformer.resblocks.2.attn.in_proj_bias"][64:128],
                       hf["encoder.layers.2.self_attn.k_proj.bias"])
    assert torch.equal(mapped["model.visual.transformer.resblocks.0.mlp.c_proj.weight"],
                       hf["encoder.layers.0.mlp.fc2.weight"])
    assert torch.equal(mapped["model.visual.ln_pre.bias"], hf["pre_layrnorm.bias"])
    assert torch.equal(mapped["model.visual.conv1.weight"], hf["embeddings.patch_embedding.weight"])
    assert torch.equal(mapped["model.visual.positional_embedding"], hf["embeddings.position_embedding.weight"])
    # The vision tower in ImageEncoder.state_dict() order, without proj: what FusionBench merges.
    expected = [k for k in ImageEncoder("demo").state_dict()
                if k.startswith("model.visual.") and k != "model.visual.proj"]
    assert list(mapped) == expected


@pytest.mark.parametrize("weights,prefixed", [("safetensors", True), ("bin", True), ("bin", False)])
def test_other_key_namings_and_weight_files_map_the_same(tmp_path, finetuned, weights, prefixed):
    hf_model, folder = finetuned
    other = fx.hf_clip_folder(tmp_path / "m", hf_model, weights=weights, prefixed=prefixed)
    assert (other / ("model.safetensors" if weights == "safetensors" else "pytorch_model.bin")).exists()
    reference, loaded = load_state_dict(folder), load_state_dict(other)
    assert list(loaded) == list(reference) and all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_clip_model_folder_drops_text_side(pretrained):
    clip, folder = pretrained
    mapped = load_state_dict(folder)
    assert all(k.startswith("model.visual.") for k in mapped)
    assert torch.equal(hf_clip.projection(folder), clip.visual_projection.weight.T)


def test_bad_folders(tmp_path, finetuned):
    _, folder = finetuned
    with pytest.raises(hf_clip.HFCheckpointError, match="visual_projection"):
        hf_clip.projection(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        load_state_dict(empty)
    gelu = fx.hf_clip_folder(tmp_path / "gelu", fx.hf_clip_model(seed=2, vision_only=True))
    config = (gelu / "config.json").read_text().replace('"quick_gelu"', '"gelu"')
    (gelu / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match="quick_gelu"):
        load_state_dict(gelu)


def _hf_tree(root, tasks, hub_cache=False):
    def place(repo_id):
        if hub_cache:
            path = root / ("models--" + repo_id.replace("/", "--")) / "snapshots" / "0123abc"
        else:
            path = root / repo_id
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
        (path / "model.safetensors").write_bytes(b"")
        return path
    pretrained = place("openai/clip-vit-base-patch32")
    return pretrained, {t: place(f"tanganke/clip-vit-base-patch32_{name}") for t, name in tasks.items()}


@pytest.mark.parametrize("hub_cache", [False, True])
def test_find_checkpoints_detects_the_fusionbench_layout(tmp_path, hub_cache):
    tasks = {"Cars": "stanford-cars", "EMNIST": "emnist_letters", "OxfordIIITPet": "oxford-iiit-pet"}
    pretrained, finetuned = _hf_tree(tmp_path, tasks, hub_cache)
    found = find_checkpoints(tmp_path, "ViT-B-32", list(tasks))
    assert found.family == "fusionbench_hf"
    assert found.pretrained == pretrained and found.finetuned == finetuned and found.heads == {}


def test_find_hf_checkpoints_lists_every_missing_folder(tmp_path):
    _hf_tree(tmp_path, {"SVHN": "svhn"})
    with pytest.raises(CheckpointError) as info:
        find_checkpoints(tmp_path, "ViT-B-32", ["SVHN", "SUN397", "DTD"], family="fusionbench_hf")
    message = str(info.value)
    assert "2 checkpoint file(s) missing" in message
    assert str(tmp_path / "tanganke" / "clip-vit-base-patch32_sun397") in message
    assert str(tmp_path / "tanganke" / "clip-vit-base-patch32_dtd") in message


def test_suite_evaluates_hf_checkpoints_with_the_pretrained_projection(pretrained, finetuned, pixels):
    from src.checkpoints import CheckpointSet
    from src.suite import Suite
    clip, clip_folder = pretrained
    hf_model, folder = finetuned
    found = CheckpointSet("demo", hf_clip.FAMILY, clip_folder, {"SVHN": folder})
    suite = Suite(found, ["SVHN"], text_tower="openai", device="cpu")
    suite.load_encoder(suite.finetuned("SVHN"))
    with torch.no_grad():
        ours = suite.encoder.eval()(pixels)
    torch.testing.assert_close(ours, _hf_features(hf_model, clip.visual_projection.weight, pixels), rtol=0, atol=1e-5)
