"""The run protocols without files: an interrupted adaptation resumed from its last checkpoint ends exactly where the
uninterrupted one ends, and a continual run keeps the orders it already finished."""
import copy

import pandas as pd
import pytest
import torch

from src.merging import AdaMerging, ContinualWeightAverage
from src.modeling import ClassificationHead, ImageEncoder
from src.protocols import STEP_COLUMNS, BatchSampler, adapt, continual, continual_summary
from src.task_vectors import task_vector

K, N_IMAGES = 2, 24


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    encoder = ImageEncoder("demo")
    g = torch.Generator().manual_seed(1)
    pre = {k: v.clone() for k, v in encoder.state_dict().items()}
    vectors = [task_vector(pre, {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in pre.items()})
               for _ in range(K)]
    heads = [ClassificationHead(True, 100 * torch.nn.functional.normalize(torch.randn(4, 64, generator=g), dim=1))
             for _ in range(K)]
    images = torch.randn(K, N_IMAGES, 3, 32, 32, generator=g)
    return encoder, pre, vectors, heads, images


def _run(setting, sampling, steps, resume=None, stop_after=None):
    encoder, pre, vectors, heads, images = setting
    trainer = AdaMerging(copy.deepcopy(encoder), pre, vectors, copy.deepcopy(heads), granularity="layer",
                         init=0.3, lr=1e-3)
    sampler = BatchSampler([N_IMAGES] * K, 8, 2, sampling, seed=3)
    saved, evaluations = [], []

    def checkpoint(state):
        saved.append(copy.deepcopy(state))
        if stop_after is not None and state["step"] == stop_after:
            raise KeyboardInterrupt

    def evaluate(coefficients, label):
        evaluations.append(label)
        return {"a": float(coefficients.mean()), "b": 0.0}
    try:
        result = adapt(trainer, sampler, lambda task, idx: images[task][idx], steps, evaluate, eval_every=2,
                       resume=resume, checkpoint=checkpoint)
    except KeyboardInterrupt:
        result = None
    return result, saved, evaluations


@pytest.mark.parametrize("sampling", ["fresh", "stream"])
def test_a_resumed_adaptation_ends_exactly_where_the_uninterrupted_one_ends(setting, sampling):
    full, _, full_evaluations = _run(setting, sampling, steps=5)
    interrupted, saved, _ = _run(setting, sampling, steps=5, stop_after=3)
    assert interrupted is None and saved[-1]["step"] == 3
    resumed, _, evaluations = _run(setting, sampling, steps=5, resume=saved[-1])
    assert torch.equal(resumed.coefficients, full.coefficients)
    pd.testing.assert_frame_equal(resumed.history, full.history)
    assert resumed.init == full.init
    assert evaluations == ["step 4"]  # step 0 and step 2 come from the saved state, not evaluated again
    assert full_evaluations == ["step 0", "step 2", "step 4"]


def test_resuming_from_a_later_state_differs_from_starting_over(setting):
    """The state carries the optimiser and sampler: dropping either would change the result, so the check above
    can fail."""
    full, saved, _ = _run(setting, "stream", steps=4)
    fresh_optimiser = copy.deepcopy(saved[1])
    fresh_optimiser["trainer"]["optimizer"]["state"] = {}
    wrong, _, _ = _run(setting, "stream", steps=4, resume=fresh_optimiser)
    assert not torch.equal(wrong.coefficients, full.coefficients)


def test_continual_keeps_finished_orders_and_redoes_a_partial_one():
    pretrained = {"w": torch.zeros(3)}
    models = {t: {"w": torch.full((3,), float(i + 1))} for i, t in enumerate("abc")}
    orders = [["a", "b", "c"], ["c", "a", "b"]]
    calls = []

    def evaluate(state_dict, label, tasks):
        calls.append(label)
        return {t: float(state_dict["w"][0]) * 10 + len(tasks) for t in tasks}
    mergers = {"avg": lambda: ContinualWeightAverage(pretrained)}
    saved = []
    full = continual(mergers, orders, models.__getitem__, evaluate, on_order=lambda table: saved.append(table))
    assert len(calls) == 6 and list(full.columns) == STEP_COLUMNS and len(full) == 2 * (1 + 2 + 3)
    # Running average after a, b, c: 1, 1.5, 2.
    assert full[(full.order == 0) & (full.step == 3)].accuracy.tolist() == [23.0] * 3

    calls.clear()
    partial = pd.concat([saved[0], saved[1][saved[1].order == 1].head(2)])  # order 1 cut off after 2 rows
    resumed = continual(mergers, orders, models.__getitem__, evaluate, done=partial)
    assert calls == ["avg order 1 step 1", "avg order 1 step 2", "avg order 1 step 3"]
    pd.testing.assert_frame_equal(resumed, full)

    changed = [["a", "b", "c"], ["b", "c", "a"]]  # another order 1: its old rows must not be reused
    calls.clear()
    continual(mergers, changed, models.__getitem__, evaluate, done=full)
    assert calls == ["avg order 1 step 1", "avg order 1 step 2", "avg order 1 step 3"]
    summary = continual_summary(full, ["avg"], 3, backbone="b")
    assert summary.final_avg_accuracy_mean.tolist() == [23.0] and summary.num_orders.tolist() == [2]
    assert list(summary.columns[:3]) == ["method", "backbone", "num_tasks"] and summary.num_tasks.tolist() == [3]
