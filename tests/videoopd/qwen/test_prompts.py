import pytest

from videoopd.grounding.metrics import parse_span
from videoopd.qwen.prompts import (
    PAPER_PROMPT,
    SYSTEM_PROMPT,
    build_messages,
    format_answer,
    render_chat,
    render_prompt,
)
from videoopd.qwen.tiny import build_tiny_processor

# DESIGN.md section 6, character for character.
DESIGN_PROMPT = (
    'To accurately pinpoint the event "a man opens the door" in the video, determine the precise time period of '
    "the event. Provide the start and end times (in seconds, precise to two decimal places) in the format "
    '"start time to end time", For example: "12.54 to 17.83".'
)


def test_paper_prompt_matches_the_design_text():
    assert render_prompt("a man opens the door") == DESIGN_PROMPT
    assert SYSTEM_PROMPT == "You are a video analysis expert."


def test_timelens_prompt_asks_for_its_answer_format():
    prompt = render_prompt("a man opens the door", "timelens")
    assert "'a man opens the door'" in prompt
    assert "The event happens in <start time> - <end time> seconds" in prompt


def test_render_prompt_validates_arguments():
    with pytest.raises(ValueError, match="style"):
        render_prompt("x", "nope")
    with pytest.raises(ValueError, match="query"):
        render_prompt("   ")
    with pytest.raises(TypeError, match="query"):
        render_prompt(3)


def test_paper_messages_have_the_system_prompt_and_one_video():
    messages = build_messages("a dog runs")
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    user = messages[1]
    assert user["role"] == "user"
    assert user["content"][0] == {"type": "video"}
    assert user["content"][1]["text"] == PAPER_PROMPT.format(query="a dog runs")
    assert len(messages) == 2


def test_timelens_messages_have_no_system_prompt_by_default():
    assert [m["role"] for m in build_messages("a dog runs", "timelens")] == ["user"]


def test_system_prompt_can_be_overridden_or_dropped():
    assert build_messages("q", system_prompt="Be brief.")[0]["content"] == "Be brief."
    assert [m["role"] for m in build_messages("q", system_prompt=None)] == ["user"]
    with pytest.raises(TypeError, match="system_prompt"):
        build_messages("q", system_prompt=3)


def test_answer_becomes_the_assistant_turn():
    messages = build_messages("q", answer="1.00 to 2.00")
    assert messages[-1] == {"role": "assistant", "content": "1.00 to 2.00"}


@pytest.mark.parametrize("style", ["paper", "timelens"])
def test_formatted_answers_parse_back(style):
    assert parse_span(format_answer((12.54, 17.83), style)) == pytest.approx((12.54, 17.83), abs=0.05)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_chat_template_renders_system_video_and_generation_prompt(family):
    processor = build_tiny_processor(family)
    text = render_chat(processor, build_messages("a dog runs"))
    assert text.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
    assert "<|vision_start|><|video_pad|><|vision_end|>" + PAPER_PROMPT.format(query="a dog runs") in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|video_pad|>") == 1


def test_qwen25_template_adds_its_default_system_prompt_for_timelens():
    text = render_chat(build_tiny_processor("qwen2_5_vl"), build_messages("q", "timelens"))
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")


def test_render_chat_rejects_non_processors():
    with pytest.raises(TypeError, match="processor"):
        render_chat(object(), build_messages("q"))


def test_a_data_files_own_prompt_is_shown_as_written():
    from videoopd.data.annotations import GroundingRecord
    from videoopd.qwen.collators import GroundingCollator, SFTCollator

    own = "When does the cat sit? Answer in seconds."
    records = [
        GroundingRecord("a", "a.mp4", "the cat sits", (1.0, 2.0), 8.0, "s", prompt=own),
        GroundingRecord("b", "b.mp4", "the cat sits", (1.0, 2.0), 8.0, "s"),
    ]
    processor = build_tiny_processor("qwen2_5_vl")
    own_text, template_text = GroundingCollator(processor).texts(records)
    assert own in own_text and "To accurately pinpoint" not in own_text
    assert render_prompt("the cat sits") in template_text and own not in template_text
    assert own_text.replace(own, render_prompt("the cat sits")) == template_text  # the rest of the chat is the same
    assert own in SFTCollator(processor).text(records[0])
    with pytest.raises(ValueError, match="prompt must be None or a non-empty string"):
        build_messages("q", prompt="  ")


def test_a_data_files_own_system_prompt_is_shown_when_the_run_asks():
    from videoopd.data.annotations import GroundingRecord
    from videoopd.data.video import DecodeConfig
    from videoopd.evaluation.evaluate import predictions_identity
    from videoopd.qwen.collators import GroundingCollator, SFTCollator
    from videoopd.qwen.prompts import DATA_SYSTEM, STYLE_DEFAULT
    from videoopd.training.config import DecodeOptions

    records = [
        GroundingRecord("a", "a.mp4", "the cat sits", (1.0, 2.0), 8.0, "s", system="Be brief."),
        GroundingRecord("b", "b.mp4", "the cat sits", (1.0, 2.0), 8.0, "s"),
    ]
    processor = build_tiny_processor("qwen2_5_vl")
    own, plain = GroundingCollator(processor, system_prompt=DATA_SYSTEM).texts(records)
    assert "Be brief." in own and SYSTEM_PROMPT not in own
    assert SYSTEM_PROMPT in plain  # no system prompt of its own: the style's
    assert all("Be brief." not in text for text in GroundingCollator(processor).texts(records))  # not asked
    assert "Be brief." in SFTCollator(processor, system_prompt=DATA_SYSTEM).text(records[0])
    assert "Be brief." not in SFTCollator(processor).text(records[0])
    assert DecodeOptions(system_prompt_from_data=True).system_prompt_setting is DATA_SYSTEM
    assert DecodeOptions().system_prompt_setting is STYLE_DEFAULT
    identity = predictions_identity(DecodeConfig(), "paper", DATA_SYSTEM, 64)
    assert identity["system_prompt"] == {"from_data": True, "else": SYSTEM_PROMPT}
