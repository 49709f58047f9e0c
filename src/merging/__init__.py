"""Merging methods: pure functions and classes on state dicts, one module per method, no I/O."""
from src.merging.adamerging import AdaMerging, layer_wise_merge
from src.merging.continual import ContinualTaskArithmetic, ContinualWeightAverage
from src.merging.opcm import OPCM
from src.merging.task_arithmetic import task_arithmetic

__all__ = ["AdaMerging", "layer_wise_merge", "task_arithmetic", "OPCM", "ContinualTaskArithmetic",
           "ContinualWeightAverage"]
