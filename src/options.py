"""The allowed values of the methods' options, importable without torch: the entry scripts check their flags against
them before anything heavy loads, and the methods check their arguments against the same values."""

MERGE_FUNCS = ("sum", "mean", "max")  # TIES: how the agreeing entries are combined
GRANULARITIES = ("layer", "task")  # AdaMerging: one coefficient per tensor and task, or per task
SAMPLINGS = ("fresh", "stream")  # AdaMerging: how unlabeled test batches are drawn (src.protocols.BatchSampler)
# AdaMerging: --variant -> the method's name (its results table), in the papers' row order.
ADAMERGING_VARIANTS = {"task_wise": "task_wise_adamerging", "task_wise_pp": "task_wise_adamergingpp",
                       "layer_wise": "layer_wise_adamerging", "layer_wise_pp": "layer_wise_adamergingpp"}
# OPCM and its continual baselines (src.merging.continual.CONTINUAL_MERGERS), in the paper's row order.
CONTINUAL_METHODS = ("opcm", "continual_ta", "continual_ties", "continual_avg")
# FusionBench's adaptation settings (config/method/adamerging/clip.yaml and its entropy_loss; docs/hf_route.md),
# where they differ from the AdaMerging repository's, which are the AdaMerging module's and script's defaults.
FUSIONBENCH = {"steps": 1000, "batches_per_task": 1, "clamp": False, "entropy_eps": 1e-8, "sampling": "stream"}
