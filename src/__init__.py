"""mergerepro: model merging for CLIP ViT image encoders (Task Arithmetic, TIES, AdaMerging, EMR, OPCM).

The package is named `src` on purpose: task_vectors checkpoints are pickles that reference `src.modeling`.
"""
