"""Every parameter of the `spotvlm` model in one place: its config `parameters` (SpotVLMConfig) and its request
parameters (REQUEST_PARAMETERS). README.md's parameter tables are generated from here:
`python -m python_backends.serving.spotvlm_config` prints them, and a unit test checks that the README holds them.

A config parameter left empty or as an unfilled `${...}` template value takes its default; `SPOTVLM_<PARAMETER>` in
the server's environment overrides the config (python_backends.params.with_env_overrides).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from python_backends.context.focus import FocusConfig, FocusMode, parse_focus_mode
from python_backends.context.region_questions import RegionQuestions
from python_backends.context.watch_list import WatchList
from python_backends.context.replacement import ReplacementConfig
from python_backends.context.served_context import ServedContextConfig
from python_backends.context.store import StoreLimits
from python_backends.params import get_param
from python_backends.serving.request_fields import DEFAULT_MAX_INPUT_PIXELS

CONTEXT_MATCH_CHOICES = ("question", "any")


def _param(default: Any, doc: str, parse: Callable[[str], Any] | None = None) -> Any:
    """A config parameter: its default, a one-line doc for the README table and, where a plain cast is not enough, a
    parser of its text."""
    return field(default=default, metadata={"doc": doc, "parse": parse})


@dataclass(frozen=True)
class SpotVLMConfig:
    """The `spotvlm` model's config parameters, typed, with their defaults."""

    checkpoint: str = _param("", "the edge checkpoint folder; its `tokenizer.json` counts tokens (else words)")
    cloud_url: str = _param(
        "", "the cloud's gRPC address, several comma-separated, or `dns:///HOST:PORT`; empty or `off`: no cloud"
    )
    cloud_delay: str = _param(
        "0", "extra delay on the cloud link: `1500` (ms), `2000+-1000`, `uniform:1000:3000` or `trace:FILE.csv`"
    )
    cloud_model: str = _param("lvlm", "the model the cloud server answers with")
    cloud_prompt: str = _param(
        "{question}", "what the LVLM is asked; must contain `{question}` (add a grounding instruction for boxes)"
    )
    cloud_max_tokens: int = _param(48, "the LVLM's answer length in tokens")
    cloud_deadline_ms: float = _param(10000.0, "deadline of one cloud request")
    cloud_max_inflight: int = _param(1, "frames of one stream at the cloud at once; more are skipped (`skipped_busy`)")
    cloud_questions: int = _param(
        StoreLimits.max_questions,
        "a frame sent to the cloud asks the stream's last this many distinct questions, and the grounding question of "
        "each region question among them: keep twice this, plus the watched objects and questions, within lvlm's "
        "`max_prompts` (64)",
    )
    cloud_watch: str = _param(
        "",
        "comma-separated objects the cloud is also asked to locate (with `region_grounding_prompt`), at most once "
        "every `cloud_watch_interval_ms` per stream, with `focus_tracking` on: a grounding or region question about "
        "one finds its box, tracked to the frame, before its own first cloud answer (empty or `off`: none)",
    )
    cloud_watch_questions: str = _param(
        "",
        "`;`-separated questions the cloud is also asked with the watch list: a stream asking one for the first time "
        "finds an answer no older than the cloud's delay and the interval (empty or `off`: none)",
    )
    cloud_watch_interval_ms: float = _param(
        1000.0, "a stream's frames sent to the cloud ask the watch list at most this often (0: every frame sent)"
    )
    cloud_jpeg_quality: int = _param(85, "JPEG quality of frames sent to the cloud as pixels")
    cloud_max_side: int = _param(0, "frames sent to the cloud are downscaled to this longer side (0: as they are)")
    cloud_failure_threshold: int = _param(3, "failures in a row that open the circuit breaker")
    cloud_backoff_ms: float = _param(1000.0, "the breaker's first back-off; it doubles after each failed trial")
    cloud_max_backoff_ms: float = _param(5000.0, "the breaker's longest back-off")
    cloud_slow_ms: float = _param(3000.0, "a round trip over this (or a timeout) reports `cloud_state` `slow`")
    focus_mode: FocusMode = _param(
        FocusMode.CROP_AND_FRAME,
        "`crop_and_frame`, `crop_only` or `off`: the default of the `focus` request parameter",
        parse=lambda text: parse_focus_mode(text, FocusMode.CROP_AND_FRAME),
    )
    focus_questions: str = _param(
        FocusConfig.question_pattern, "regular expression of the questions that get focus (empty: every question)"
    )
    focus_margin: float = _param(FocusConfig.margin, "margin around the focus box, as a fraction of its size")
    focus_margin_per_s: float = _param(FocusConfig.margin_per_s, "extra margin fraction per second of context age")
    focus_max_margin: float = _param(FocusConfig.max_margin, "the largest margin fraction")
    focus_min_size: int = _param(FocusConfig.min_size, "the crop's smallest side in pixels")
    focus_frame_side: int = _param(FocusConfig.frame_side, "in `crop_and_frame`, the frame's downscaled longer side")
    focus_tracking: bool = _param(
        True,
        "carry the cloud's boxes to the current frame (history boxes where the object is now, crop centred on it); "
        "`false`: the paper's method; the default of the `focus_tracking` request parameter",
    )
    carry_answers: bool = _param(
        True,
        "answer with the cloud's own answer to the question asked, carried to this frame (text as it came; boxes where "
        "they were tracked to, where the cloud saw them when lost), without asking the SVLM; needs `focus_tracking` "
        "and the text context; the default of the `carry_answers` request parameter",
    )
    region_questions: str = _param(
        RegionQuestions.pattern,
        "regular expression (case aside) of the region questions, its group `object` naming the object: the cloud is "
        "also asked that object's box, and with `carry_answers` the answer is the cell of that box tracked to the "
        "frame (`off`: off)",
    )
    region_grounding_prompt: str = _param(
        RegionQuestions.grounding_prompt,
        "how the cloud is asked for a region question's object's box, and a watched object's (`{object}`)",
    )
    tracking_frames: int = _param(100, "frames per stream kept as small colour copies to track from (0: none)")
    tracking_side: int = _param(StoreLimits.frame_side, "the longer side of those copies, in pixels")
    tracking_max_boxes: int = _param(
        ServedContextConfig.max_tracked_boxes,
        "boxes tracked per frame (those the question is about), at most; a region question's object is one more",
    )
    svlm_image_size: int = _param(
        0, "the SVLM's square input side: history boxes are in its pixels (0: the checkpoint's, else 448)"
    )
    svlm_coordinate_bin: int = _param(
        ServedContextConfig.coordinate_bin, "the SVLM writes box corners on multiples of this (as it was trained)"
    )
    context_turns: int = _param(ReplacementConfig.max_turns, "K: the SVLM's last turns in the history")
    context_match: str = _param(
        "question", "`question`: only turns and LVLM answers to the question asked; `any`: whatever they asked"
    )
    context_budget_tokens: int = _param(ReplacementConfig.budget_tokens, "one LVLM answer is cut to this many tokens")
    context_history_tokens: int = _param(
        ReplacementConfig.history_tokens, "the whole history's tokens; the oldest turns go first"
    )
    max_context_age_ms: float = _param(30000.0, "LVLM answers older than this are not used")
    max_prompt_tokens: int = _param(1024, "the longest question, in the edge tokenizer's tokens")
    default_max_tokens: int = _param(24, "the SVLM's answer length when a request names none")
    max_tokens_limit: int = _param(256, "the largest `max_tokens` a request may ask for")
    max_input_pixels: int = _param(DEFAULT_MAX_INPUT_PIXELS, "the largest frame, in pixels")
    store_max_streams: int = _param(StoreLimits.max_streams, "streams in the context store; least recently used go")
    store_ttl_s: float = _param(StoreLimits.ttl_s, "a stream idle this long is forgotten")
    store_turns: int = _param(StoreLimits.max_turns, "turns kept per stream (at least `context_turns`)")

    def __post_init__(self) -> None:
        if self.context_match not in CONTEXT_MATCH_CHOICES:
            raise ValueError(f"context_match must be 'question' or 'any', got {self.context_match!r}")
        if self.tracking_frames < 0 or self.tracking_max_boxes < 0 or self.svlm_image_size < 0:
            raise ValueError("tracking_frames, tracking_max_boxes and svlm_image_size must not be negative")
        if self.svlm_coordinate_bin < 1:
            raise ValueError(f"svlm_coordinate_bin must be at least 1, got {self.svlm_coordinate_bin}")
        if self.cloud_questions < 1:
            raise ValueError(f"model parameter cloud_questions must be at least 1, got {self.cloud_questions}")
        self.region_rules()  # raises on a bad pattern or prompt
        self.watch_list()  # raises on a bad list or interval
        if "{question}" not in self.cloud_prompt:
            raise ValueError(f"model parameter cloud_prompt must contain {{question}}, got {self.cloud_prompt!r}")

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> SpotVLMConfig:
        """From filled config parameters (python_backends.params.model_parameters, environment overrides applied).
        Parameters this model does not know are ignored: the config also carries other models' settings."""
        values: dict[str, Any] = {}
        for item in fields(cls):
            raw = params.get(item.name)
            if raw is None:
                continue
            parse = item.metadata["parse"]
            values[item.name] = parse(raw) if parse is not None else get_param(params, item.name, item.default)
        if "cloud_url" in values:
            values["cloud_url"] = values["cloud_url"].strip()
        if "context_match" in values:
            values["context_match"] = (values["context_match"].strip() or "question").lower()
        return cls(**values)

    @property
    def cloud_off(self) -> bool:
        return self.cloud_url.lower() in {"", "off", "none", "disabled"}

    def focus(self) -> FocusConfig:
        return FocusConfig(
            margin=self.focus_margin,
            margin_per_s=self.focus_margin_per_s,
            max_margin=self.focus_max_margin,
            min_size=self.focus_min_size,
            frame_side=self.focus_frame_side,
            question_pattern=self.focus_questions,
        )

    def replacement(self) -> ReplacementConfig:
        return ReplacementConfig(
            max_turns=self.context_turns,
            budget_tokens=self.context_budget_tokens,
            history_tokens=self.context_history_tokens,
            match_question=self.context_match == "question",
        )

    def store_limits(self) -> StoreLimits:
        return StoreLimits(
            max_streams=self.store_max_streams,
            ttl_s=self.store_ttl_s,
            max_turns=max(self.context_turns, self.store_turns),
            max_questions=self.cloud_questions,
            # Room for the answers to every standing question (and with region questions on, its grounding question)
            # on the newest two frames the cloud answered: the newer may arrive first.
            max_cloud_results=max(StoreLimits.max_cloud_results, self.standing_prompts_per_frame() * 2),
            max_frames=self.tracking_frames,
            frame_side=self.tracking_side,
        )

    def svlm_side(self) -> int:
        """svlm_image_size, or when 0 the square input side recorded in a checkpoint built here
        (spotvlm_build.json), else 448 (as spotvlm/build.py's default)."""
        if self.svlm_image_size:
            return self.svlm_image_size
        path = Path(self.checkpoint) / "spotvlm_build.json" if self.checkpoint else None
        if path is None or not path.is_file():
            return 448
        try:
            return int(json.loads(path.read_text(encoding="utf-8"))["spec"]["image_size"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read the SVLM's image size from {path}: {exc!r}") from exc

    def served_context(self, svlm_image_size: int, tracking: bool | None = None) -> ServedContextConfig:
        """How the SVLM's context is built, for an SVLM whose square input has `svlm_image_size` pixels a side;
        `tracking` None: the configured `focus_tracking`."""
        return ServedContextConfig(
            replacement=self.replacement(),
            focus=self.focus(),
            tracking=self.focus_tracking if tracking is None else tracking,
            svlm_size=(svlm_image_size, svlm_image_size),
            coordinate_bin=self.svlm_coordinate_bin,
            max_tracked_boxes=self.tracking_max_boxes,
            region_rules=self.region_rules(),
        )

    def standing_prompts_per_frame(self) -> int:
        """The most questions one frame sent to the cloud asks for the stream's own questions (the context store
        files their answers)."""
        return self.cloud_questions * (2 if self.region_rules().enabled else 1)

    def prompts_per_frame(self) -> int:
        """The most questions one frame sent to the cloud asks, the watch list's included."""
        return self.standing_prompts_per_frame() + len(self.watch_list().questions())

    def region_rules(self) -> RegionQuestions:
        return RegionQuestions(self.region_questions, self.region_grounding_prompt)

    def watch_list(self) -> WatchList:
        return WatchList.parse(
            self.cloud_watch,
            self.region_grounding_prompt,
            self.cloud_watch_interval_ms / 1000.0,
            self.cloud_watch_questions,
        )


@dataclass(frozen=True)
class RequestParameter:
    name: str
    type: str
    default: str
    doc: str


# Per-request parameters (Triton request `parameters`), read in SpotVLMStep._parse.
REQUEST_PARAMETERS = (
    RequestParameter("max_tokens", "int", "`default_max_tokens`", "the SVLM's answer length (or input `MAX_TOKENS`)"),
    RequestParameter("focus", "str", "`auto`", "`auto` (`focus_mode`), `off`, `crop_only`, `crop_and_frame`"),
    RequestParameter("use_context", "bool", "`true`", "false: answer from the frame alone, no cloud context"),
    RequestParameter("text_context", "bool", "`true`", "false: no text history for the SVLM, the focus crop stays"),
    RequestParameter(
        "focus_tracking", "bool", "`focus_tracking`", "false: the cloud's answers as they came, not tracked to now"
    ),
    RequestParameter(
        "carry_answers", "bool", "`carry_answers`", "false: the SVLM answers every frame, carried answers or not"
    ),
    RequestParameter(
        "cloud_delay", "str", "the config's", "extra cloud delay for this frame, as `cloud_delay` but no `trace:`"
    ),
)


def _default_text(value: Any) -> str:
    if isinstance(value, FocusMode):
        value = value.value
    if isinstance(value, bool):
        value = str(value).lower()
    if value == "":
        return "(empty)"
    return f"`{value}`"


def parameter_tables() -> str:
    """The README's two tables, config parameters and request parameters, as markdown."""
    lines = ["| config parameter | type | default | meaning |", "|---|---|---|---|"]
    for item in fields(SpotVLMConfig):
        kind = item.type if isinstance(item.type, str) else item.type.__name__
        lines.append(f"| `{item.name}` | {kind} | {_default_text(item.default)} | {item.metadata['doc']} |")
    lines += ["", "| request parameter | type | default | meaning |", "|---|---|---|---|"]
    for request in REQUEST_PARAMETERS:
        lines.append(f"| `{request.name}` | {request.type} | {request.default} | {request.doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(parameter_tables(), end="")
