import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from src.eval import evaluate
from src.modeling import ClassificationHead


def test_accuracy_is_the_share_of_correct_argmax_over_the_whole_split():
    # Features are one-hot rows; the head maps feature i to class i, so the prediction is the hot index.
    hot = torch.tensor([0, 1, 2, 2, 1, 0, 2])
    labels = torch.tensor([0, 1, 2, 0, 0, 0, 1])  # 4 of 7 right
    data = TensorDataset(nn.functional.one_hot(hot, 3).float(), labels)
    head = ClassificationHead(normalize=True, weights=torch.eye(3))
    for batch_size in (1, 3, 128):
        assert evaluate(nn.Identity(), head, data, batch_size=batch_size, device="cpu") == pytest.approx(400 / 7)


def test_encoder_runs_in_eval_mode_and_the_empty_split_is_an_error():
    encoder = nn.Sequential(nn.Dropout(0.99), nn.Identity())
    data = TensorDataset(torch.eye(3) * 5, torch.arange(3))
    head = ClassificationHead(normalize=False, weights=torch.eye(3))
    assert evaluate(encoder, head, data, device="cpu") == 100.0  # dropout would wreck it in train mode
    with pytest.raises(ValueError, match="empty"):
        evaluate(encoder, head, TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), device="cpu",
                 desc="empty split")
