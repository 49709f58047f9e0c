"""TIES-Merging (Yadav et al., 2023) as the AdaMerging code ran it on ViTs: trim each task vector to its top K % by
magnitude, elect a sign per entry by mass, merge the agreeing entries disjointly, θ = θ₀ + λ·merged.

Defaults reproduce the 72.92 average (ViT-B/32, task_vectors checkpoints): K is taken over every float entry of the
checkpoint, the zero text-side leftovers included, as the reference did; `--vision-only-k` counts only the image
tower (the corrected variant). Writes ties_merging.csv to results/<model>/ties_merging-<settings hash>/.
"""
from src.cli import Range, constants, entry, parse_args
from src.options import MERGE_FUNCS

K = 20.0  # percent of each task vector kept (0.2 means the same)
SCALING_COEF = 0.3  # λ; the AdaMerging logs' TIES row uses 0.3
MERGE_FUNC = "sum"  # "sum" (disjoint sum, the ViT scripts' default), "mean" or "max"
VISION_ONLY_K = False  # True: the top-K threshold over model.visual.* only


def main(argv: list[str] | None = None):
    args = parse_args(__doc__, constants(globals()), argv,
                      rules={"K": Range(0, 100, lo_open=True), "MERGE_FUNC": MERGE_FUNCS})
    # Imported once the flags are checked: --help and a wrong flag answer before torch loads.
    from src.merging import ties_merging
    from src.run import Run
    with Run(args, "ties_merging") as run:
        merged = ties_merging(run.suite.pretrained, run.suite.all_finetuned(), k=args.k,
                              scaling_coef=args.scaling_coef, merge_func=args.merge_func,
                              vision_only_k=args.vision_only_k)
        run.report("ties_merging", run.suite.evaluate(merged, "TIES"))
        return run.out


if __name__ == "__main__":
    entry(main)
