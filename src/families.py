"""Checkpoint families: how a set of checkpoints was written, and so how it is read, which data source it is evaluated
on and which published numbers it stands beside. A route (`--route`) names the family it reads. Importable without
torch, for the command line and the grid."""

TASK_VECTORS_FAMILY = "task_vectors"  # open_clip ImageEncoder pickles and head files (task_vectors, AdaMerging, EMR)
HF_FAMILY = "fusionbench_hf"  # Hugging Face CLIPVisionModel folders (FusionBench, OPCM)
DEMO_FAMILY = "demo"  # the bundled demo suite, written like task_vectors files
FAMILY_OF_ROUTE = {"task_vectors": TASK_VECTORS_FAMILY, "hf": HF_FAMILY, "demo": DEMO_FAMILY}
