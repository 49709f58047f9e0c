"""The offline demo suite: a tiny CLIP, eight procedurally generated tasks, fine-tuned encoders (README, "The demo
suite"). Its names are here, importable without torch, for the command line to check flags against."""

MODEL = "demo"
TASK_NAMES = ("Shapes", "Colors", "Textures", "Sizes", "Counts", "Positions", "Arrows", "Scenes")
