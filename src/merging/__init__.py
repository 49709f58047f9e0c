"""Merging methods: pure functions and classes on state dicts, one module per method, no I/O."""
from src.merging.adamerging import AdaMerging, layer_wise_merge
from src.merging.continual import (CONTINUAL_MERGERS, ContinualTaskArithmetic, ContinualTIES, ContinualWeightAverage,
                                   continual_merger)
from src.merging.emr import EMRModel, emr_merging
from src.merging.opcm import OPCM
from src.merging.task_arithmetic import task_arithmetic
from src.merging.ties import ties_merging, ties_selected_vectors

__all__ = ["AdaMerging", "layer_wise_merge", "task_arithmetic", "OPCM", "ContinualTaskArithmetic",
           "ContinualTIES", "ContinualWeightAverage", "CONTINUAL_MERGERS", "continual_merger", "EMRModel",
           "emr_merging", "ties_merging", "ties_selected_vectors"]
