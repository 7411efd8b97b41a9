"""The do-it-yourself baseline of `spotvlm bench --capacity`: the edge checkpoint run with transformers' `generate` in
one Python process, what a user would write instead of serving it.

A spawned child process loads the checkpoint once (python_backends.generation.QwenVLGenerator with decoder
"generate": the checkpoint's image processor, its vision tower in torch and `model.generate`, the served prompt
template) and answers commands from the bench: a paced run of one stream's frames (the latency a user sees at one
stream) or a back-to-back run (what one such process can serve per second). Its own process keeps its torch threads
and memory out of the bench's client, and it is idle while the served phases run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


class DiyBaseline:
    """The child process; `paced` and `back_to_back` block until it answers. RuntimeError when it fails."""

    def __init__(self, checkpoint: Path, prompt: str, max_tokens: int, threads: int) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # never fork a process that holds gRPC threads
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, str(checkpoint), prompt, max_tokens, threads), name="bench-diy", daemon=True
        )
        self._process.start()
        child.close()
        self.load_s: float | None = None

    def wait_ready(self) -> float:
        """Seconds the child took to load the checkpoint."""
        self.load_s = self._call(None)
        return self.load_s

    def paced(self, frames: list[np.ndarray], fps: float) -> list[tuple[float, float]]:
        """Each frame answered in turn, frame i due i/fps after the first (at once when the last answer came late);
        (seconds after the first frame's due time it was sent, latency ms) per frame."""
        return self._call(("paced", frames, fps))

    def back_to_back(self, frames: list[np.ndarray], seconds: float) -> dict[str, float]:
        """Frames answered one after another for `seconds`: {"frames", "seconds", "fps"}."""
        return self._call(("back_to_back", frames, seconds))

    def _call(self, command: Any) -> Any:
        if command is not None:
            self._conn.send(command)
        try:
            status, value = self._conn.recv()
        except EOFError:
            self._process.join()
            raise RuntimeError(f"the DIY baseline process died (exit code {self._process.exitcode})") from None
        if status != "ok":
            raise RuntimeError(value)
        return value

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(("exit",))
            except OSError:
                pass
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()


def _serve(conn: Any, checkpoint: str, prompt: str, max_tokens: int, threads: int) -> None:
    try:
        started = time.perf_counter()
        from python_backends.generation import GenerationRequest, QwenVLGenerator

        generator = QwenVLGenerator(checkpoint, num_threads=threads, decoder="generate")

        def answer(frame: np.ndarray) -> str:
            request = GenerationRequest(prompt, max_tokens, images=[frame])
            return generator.decode(generator.generate_from_images([request])[0])

        answer(np.zeros((240, 320, 3), dtype=np.uint8))  # warm-up: the first call pays for lazy set-up
        conn.send(("ok", round(time.perf_counter() - started, 2)))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    while True:
        try:
            command = conn.recv()
        except EOFError:
            return
        try:
            if command[0] == "exit":
                return
            if command[0] == "paced":
                _, frames, fps = command
                out = []
                t0 = time.perf_counter()
                for index, frame in enumerate(frames):
                    delay = t0 + index / fps - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    sent = time.perf_counter()
                    answer(frame)
                    out.append((sent - t0, (time.perf_counter() - sent) * 1000.0))
                conn.send(("ok", out))
            elif command[0] == "back_to_back":
                _, frames, seconds = command
                count, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    answer(frames[count % len(frames)])
                    count += 1
                elapsed = time.perf_counter() - t0
                conn.send(("ok", {"frames": count, "seconds": round(elapsed, 2), "fps": round(count / elapsed, 2)}))
            else:
                conn.send(("error", f"unknown command {command[0]!r}"))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
