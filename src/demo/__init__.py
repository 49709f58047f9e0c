"""The offline demo suite: a tiny CLIP, eight procedurally generated tasks, fine-tuned encoders (README, "The demo
suite")."""
