"""The Hugging Face route's checkpoints, encoder, heads and preprocessing, checked against transformers itself used
the way FusionBench's classifier uses it."""
import numpy as np
import pytest
import torch
from PIL import Image

from src import heads, hf_clip
from src.checkpoints import CheckpointError, CheckpointSet, find_checkpoints, load_state_dict
from src.families import HF_FAMILY
from src.preprocess import describe, staged
from src.suite import HFSuite, make_suite
from tests.fixtures import checkpoints as fx
from tests.fixtures import huggingface as hf_fx

CLASSES = ["0", "1", "2", "3"]
TEMPLATES = ['a photo of the number: "{}".', "a {} review of a movie.", "they look {}."]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return hf_fx.hub_tree(tmp_path_factory.mktemp("hub"), ["MNIST", "SVHN"], prefixed=("SVHN",))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    shapes = [(40, 33, 3), (31, 50, 3), (32, 32), (47, 35, 3), (29, 64)]
    return [Image.fromarray(rng.integers(0, 256, s, dtype=np.uint8)) for s in shapes]


@pytest.mark.parametrize("task", ["MNIST", "SVHN"])
def test_logits_equal_fusionbench_classifier(tree, images, task):
    clip, folder = tree["clip"], tree["pretrained"]
    model, expert = tree["finetuned"][task]
    found = CheckpointSet("ViT-B-32", HF_FAMILY, folder, {task: expert})
    suite = make_suite(found, [task], device="cpu")
    assert isinstance(suite, HFSuite)
    suite.load_encoder(suite.finetuned(task))
    head = heads.build_head(*hf_clip.text_tower(folder), CLASSES, TEMPLATES, weights=heads.hf_zeroshot_weights)
    with torch.no_grad():
        ours = head(suite.encoder.eval()(torch.stack([suite.preprocess(im) for im in images])))
    expected = hf_fx.fusionbench_logits(clip, model, folder, images, CLASSES, TEMPLATES)
    assert ours.shape == expected.shape == (len(images), len(CLASSES))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)
    assert expected.std() > 1e-2  # the logits differ between images and classes: the comparison is not vacuous


def test_state_dicts_are_the_vision_towers_own(tree):
    clip, folder = tree["clip"], tree["pretrained"]
    for task, (model, expert) in tree["finetuned"].items():
        loaded, own = load_state_dict(expert), model.state_dict()
        assert list(loaded) == list(own)  # module order: q, k, v projections separate
        assert all(torch.equal(loaded[k], own[k]) for k in own)
    pretrained = load_state_dict(folder)
    vision = clip.vision_model.state_dict()
    assert list(pretrained) == list(vision) and all(torch.equal(pretrained[k], vision[k]) for k in vision)
    assert "encoder.layers.0.self_attn.q_proj.weight" in pretrained and not any("text" in k for k in pretrained)


@pytest.mark.parametrize("weights,prefixed", [("safetensors", True), ("bin", True), ("bin", False)])
def test_other_key_namings_and_weight_files_load_the_same(tmp_path, tree, weights, prefixed):
    model, folder = tree["finetuned"]["MNIST"]
    other = fx.hf_clip_folder(tmp_path / "m", model, weights=weights, prefixed=prefixed)
    reference, loaded = load_state_dict(folder), load_state_dict(other)
    assert list(loaded) == list(reference) and all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_encoder_features_are_the_projected_pooler_output(tree, images):
    clip, folder = tree["clip"], tree["pretrained"]
    encoder = hf_clip.VisionEncoder.from_folder(folder).eval()
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
        torch.testing.assert_close(encoder(pixels), expected, rtol=0, atol=1e-6)
    assert encoder.parameter_name("encoder.layers.0.mlp.fc1.weight") == "vision.encoder.layers.0.mlp.fc1.weight"


def test_preprocess_stages_equal_the_processor_bit_for_bit(tree, images):
    from transformers import CLIPImageProcessorPil
    folder = tree["pretrained"]
    processor = CLIPImageProcessorPil.from_pretrained(folder)
    stages = staged(hf_clip.image_preprocess(folder))
    for image in images:
        expected = processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]
        stored = stages.to_uint8(image)
        assert stored.dtype == np.uint8 and stored.shape == (32, 32, 3)
        assert torch.equal(stages.finish(torch.from_numpy(stored)[None])[0], expected)
        assert torch.equal(stages(image), expected)
    block = torch.from_numpy(np.stack([stages.to_uint8(im) for im in images]))
    assert torch.equal(stages.finish(block), torch.stack([stages(im) for im in images]))


def test_preprocess_description_keys_on_the_processor_settings(tree, tmp_path):
    from transformers import CLIPImageProcessor
    folder = tree["pretrained"]
    other = tmp_path / "other"
    other.mkdir()
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(other)
    assert describe(hf_clip.image_preprocess(folder)) == describe(hf_clip.image_preprocess(folder))
    assert describe(hf_clip.image_preprocess(folder)) != describe(hf_clip.image_preprocess(other))
    assert '"shortest_edge": 36' in describe(hf_clip.image_preprocess(other))


def test_a_checkpoint_of_another_width_is_refused(tmp_path, tree):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    wide = CLIPVisionModel(CLIPVisionConfig(hidden_size=96, intermediate_size=256, num_hidden_layers=4,
                                            num_attention_heads=4, image_size=32, patch_size=8))
    folder = fx.hf_clip_folder(tmp_path / "wide", wide)
    pretrained = load_state_dict(tree["pretrained"])
    with pytest.raises(CheckpointError, match=r"shape mismatches.*embeddings\.class_embedding \(96,\) vs \(64,\)"):
        load_state_dict(folder, like=pretrained, like_name="openai/clip-vit-base-patch32")
    # weights that contradict their own config.json
    config = (folder / "config.json").read_text().replace('"hidden_size": 96', '"hidden_size": 64')
    (folder / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match="not the CLIP vision tower its config.json describes"):
        load_state_dict(folder)


def test_bad_folders(tmp_path, tree):
    _, expert = tree["finetuned"]["MNIST"]
    with pytest.raises(hf_clip.HFCheckpointError, match="visual_projection"):
        hf_clip.projection(expert)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        load_state_dict(empty)
    with pytest.raises(hf_clip.HFCheckpointError, match="preprocessor_config.json.*python -m src.download"):
        hf_clip.image_preprocess(expert)
    with pytest.raises(hf_clip.HFCheckpointError, match="tokenizer"):
        hf_clip.text_tower(expert)


def _placeholder_tree(root, tasks, hub_cache=False):
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
    pretrained, finetuned = _placeholder_tree(tmp_path, tasks, hub_cache)
    found = find_checkpoints(tmp_path, "ViT-B-32", list(tasks))
    assert found.family == "fusionbench_hf"
    assert found.pretrained == pretrained and found.finetuned == finetuned and found.heads == {}


def test_hub_cache_snapshot_is_the_one_refs_main_names(tmp_path):
    _placeholder_tree(tmp_path, {}, hub_cache=True)
    repo = tmp_path / "models--openai--clip-vit-base-patch32"
    newer = repo / "snapshots" / "fedcba9"
    newer.mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    from src.checkpoints import hf_folder
    assert hf_folder(tmp_path, "openai/clip-vit-base-patch32") == repo / "snapshots" / "0123abc"


def test_both_layouts_present_prefers_as_asked(tmp_path):
    _placeholder_tree(tmp_path, {"SVHN": "svhn"})
    for path in (tmp_path / "ViT-B-32" / "zeroshot.pt", tmp_path / "ViT-B-32" / "SVHN" / "finetuned.pt"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert find_checkpoints(tmp_path, "ViT-B-32", ["SVHN"]).family == "task_vectors"
    assert find_checkpoints(tmp_path, "ViT-B-32", ["SVHN"], prefer="fusionbench_hf").family == "fusionbench_hf"


def test_find_hf_checkpoints_lists_every_missing_folder(tmp_path):
    _placeholder_tree(tmp_path, {"SVHN": "svhn"})
    with pytest.raises(CheckpointError) as info:
        find_checkpoints(tmp_path, "ViT-B-32", ["SVHN", "SUN397", "DTD"], family="fusionbench_hf")
    message = str(info.value)
    assert "2 checkpoint file(s) missing" in message
    assert str(tmp_path / "tanganke" / "clip-vit-base-patch32_sun397") in message
    assert str(tmp_path / "tanganke" / "clip-vit-base-patch32_dtd") in message
    assert "python -m src.download --route hf --model ViT-B-32 --checkpoints-only" in message
