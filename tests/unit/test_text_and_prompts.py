import pytest

from python_backends.errors import InputError
from python_backends.prompts import Turn, build_chat_prompt, decode_prompt
from python_backends.text import clean_text


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  a red   car  ", "a red car"),
        ("bad\x03byte\ufffd end", "badbyte end"),
        ("line one\n\n  line two  ", "line one\nline two"),
        ("\ufffd\ufffd", ""),
        ("naïve café 🚗", "naïve café 🚗"),
    ],
)
def test_clean_text(raw, expected):
    assert clean_text(raw) == expected


def test_prompt_has_qwen_chat_format_and_image_pads():
    prompt = build_chat_prompt("What color?", [4], history=[Turn("Q1", "A1")])
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.count("<|image_pad|>") == 4
    assert "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n" in prompt
    assert prompt.endswith("<|vision_end|>What color?<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.index("Q1") < prompt.index("<|vision_start|>")


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b"\xff\xfe bad", "not valid UTF-8"),
        (b"x" * 200, "over the limit of 100"),
        (b"x" * 20000, "bytes, over the limit"),
    ],
)
def test_decode_prompt_rejects(raw, message):
    with pytest.raises(InputError, match=message):
        decode_prompt(raw, max_chars=100)


def test_decode_prompt_accepts_utf8():
    assert decode_prompt("Où est la voiture ?".encode(), 100) == "Où est la voiture ?"
