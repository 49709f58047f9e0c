import torch

from src import heads
from src.modeling import DEMO_MODEL, create_clip, get_tokenizer

CLASSES = ["circle", "square", "red"]
TEMPLATES = ["a photo of a {}.", "a {} shape."]


def _clip():
    torch.manual_seed(0)
    model, _, _ = create_clip(DEMO_MODEL)
    return model.eval()


def test_weights_match_the_template_average_computed_one_prompt_at_a_time():
    model, tokenizer = _clip(), get_tokenizer(DEMO_MODEL)
    expected = []
    with torch.no_grad():
        for name in CLASSES:
            embs = []
            for template in TEMPLATES:
                e = model.encode_text(tokenizer([template.format(name)]))[0]
                embs.append(e / torch.sqrt((e * e).sum()))
            mean = sum(embs) / len(embs)
            expected.append(mean / torch.sqrt((mean * mean).sum()) * torch.exp(model.logit_scale))
    weights = heads.zeroshot_weights(model, tokenizer, CLASSES, TEMPLATES)
    torch.testing.assert_close(weights, torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_head_logits_are_scaled_cosines():
    model, tokenizer = _clip(), get_tokenizer(DEMO_MODEL)
    head = heads.build_head(model, tokenizer, CLASSES, TEMPLATES)
    features = torch.randn(4, head.in_features)
    cos = torch.nn.functional.normalize(features, dim=-1) @ torch.nn.functional.normalize(head.weight, dim=-1).T
    torch.testing.assert_close(head(features), cos * torch.exp(model.logit_scale), rtol=1e-5, atol=1e-4)
    assert torch.count_nonzero(head.bias) == 0


def test_head_built_twice_is_identical_and_the_cache_is_used(tmp_path):
    model, tokenizer = _clip(), get_tokenizer(DEMO_MODEL)
    builds = []

    def build(classes=CLASSES):
        builds.append(1)
        return heads.build_head(model, tokenizer, classes, TEMPLATES)

    key = heads.cache_key(DEMO_MODEL, "tower", CLASSES, TEMPLATES)
    first = heads.cached_head(tmp_path / "h.safetensors", key, build)
    second = heads.cached_head(tmp_path / "h.safetensors", key, build)
    assert len(builds) == 1
    assert torch.equal(first.weight, second.weight)
    assert torch.equal(first.weight, build().weight)


def test_cache_is_rebuilt_when_class_names_change(tmp_path):
    model, tokenizer = _clip(), get_tokenizer(DEMO_MODEL)
    path = tmp_path / "h.safetensors"
    old = heads.cached_head(path, heads.cache_key(DEMO_MODEL, "t", CLASSES, TEMPLATES),
                            lambda: heads.build_head(model, tokenizer, CLASSES, TEMPLATES))
    renamed = ["circle", "square", "blue"]
    new = heads.cached_head(path, heads.cache_key(DEMO_MODEL, "t", renamed, TEMPLATES),
                            lambda: heads.build_head(model, tokenizer, renamed, TEMPLATES))
    assert torch.equal(new.weight[:2], old.weight[:2])
    assert not torch.equal(new.weight[2], old.weight[2])
    assert torch.equal(new.weight, heads.build_head(model, tokenizer, renamed, TEMPLATES).weight)


def test_cache_keys_differ_by_model_tower_classes_and_templates():
    base = heads.cache_key("m", "t", CLASSES, TEMPLATES)
    assert len({base, heads.cache_key("n", "t", CLASSES, TEMPLATES), heads.cache_key("m", "u", CLASSES, TEMPLATES),
                heads.cache_key("m", "t", CLASSES[:2], TEMPLATES), heads.cache_key("m", "t", CLASSES, TEMPLATES[:1])}) == 5
