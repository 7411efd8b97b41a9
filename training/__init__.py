"""Training the two default tiny Qwen2.5-VL checkpoints on the replay benchmark's train split, on CPU.

tokens (single-token numbers, binned boxes), views (what each model sees), examples (the training mix), trainer
(wall-time budget, cosine LR), evaluate (per-task accuracy with CI), pipeline (caching by input hash). Command line:
`python -m training --model edge|cloud --minutes M --out DIR`.
"""
