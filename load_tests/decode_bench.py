"""Token-loop benchmark: transformers' `generate` against the greedy loops of python_backends.greedy_decode.

Runs the edge (or cloud) checkpoint's language model on edge-shaped requests (one or two images of features,
prompts of different lengths), at batch 1 and batch 8, for N new tokens. The variants are interleaved in rounds so
a busy shared machine slows them alike; the JSON it prints has, per variant and batch, the median and range of
ms per frame (a batch's wall time divided by its frames), ms per token (the batch's wall time divided by its
decode steps), the prompt pass alone (the same batch asked for one token) and the decode step derived from both
(median batch time less the median prompt pass, over the remaining steps), plus whether every variant gave the
first variant's tokens.

    .venv/bin/python load_tests/decode_bench.py --checkpoint build/checkpoints/edge --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

QUESTIONS = (
    "What is happening in this frame?",
    "How many people are crossing the street right now, and which way are they walking?",
    "Is the door open?",
    "Describe the vehicle closest to the camera.",
)


def _requests(generator, batch: int, tokens: int, seed: int):
    from python_backends.generation import GenerationRequest

    rng = np.random.default_rng(seed)
    side = 4  # a 112-pixel frame: 16 feature tokens
    requests = []
    for row in range(batch):
        images = [rng.standard_normal((side * side, generator.hidden_size)).astype(np.float32)]
        if row % 2:
            images.append(rng.standard_normal((side * side, generator.hidden_size)).astype(np.float32))
        requests.append(GenerationRequest(QUESTIONS[row % len(QUESTIONS)], tokens, image_features=images))
    return [generator.prepare_features(r) for r in requests]


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="build/checkpoints/edge")
    parser.add_argument("--variants", default="generate,modules,functional")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant and batch in each round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the serving default is 1)")
    args = parser.parse_args(argv)

    import torch

    from python_backends.generation import QwenVLGenerator

    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    generators = {v: QwenVLGenerator(args.checkpoint, decoder=v) for v in variants}
    inputs = {b: _requests(generators[variants[0]], b, args.tokens, seed=b) for b in batches}
    prompts_only = {b: _requests(generators[variants[0]], b, 1, seed=b) for b in batches}

    outputs = {(v, b): generators[v].generate_from_features(inputs[b]) for v in variants for b in batches}  # warm-up
    parity = {v: all(outputs[(v, b)] == outputs[(variants[0], b)] for b in batches) for v in variants}
    steps = {b: max(len(t) for t in outputs[(variants[0], b)]) for b in batches}
    per_frame = {(v, b): [] for v in variants for b in batches}
    per_token = {(v, b): [] for v in variants for b in batches}
    prefill = {(v, b): [] for v in variants for b in batches}
    load = []
    for round_index in range(args.rounds):
        load.append(os.getloadavg()[0])
        order = variants if round_index % 2 == 0 else variants[::-1]
        for batch in batches:
            for variant in order:
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    generators[variant].generate_from_features(inputs[batch])
                    elapsed_ms = (time.perf_counter() - started) * 1000.0
                    per_frame[(variant, batch)].append(elapsed_ms / batch)
                    per_token[(variant, batch)].append(elapsed_ms / steps[batch])
                started = time.perf_counter()
                generators[variant].generate_from_features(prompts_only[batch])
                prefill[(variant, batch)].append((time.perf_counter() - started) * 1000.0)

    report = {
        "checkpoint": str(args.checkpoint),
        "tokens": args.tokens,
        "threads": args.threads,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "load_average_1m": _summary(load),
        "decode_steps": {str(b): steps[b] for b in batches},
        "same_tokens_as_first_variant": parity,
        "results": {
            variant: {
                f"batch_{batch}": {
                    "ms_per_frame": _summary(per_frame[(variant, batch)]),
                    "ms_per_token": _summary(per_token[(variant, batch)]),
                    "prompt_pass_ms": _summary(prefill[(variant, batch)]),
                    "decode_step_ms": round(
                        (
                            statistics.median(per_frame[(variant, batch)]) * batch
                            - statistics.median(prefill[(variant, batch)])
                        )
                        / max(1, steps[batch] - 1),
                        3,
                    ),
                }
                for batch in batches
            }
            for variant in variants
        },
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
