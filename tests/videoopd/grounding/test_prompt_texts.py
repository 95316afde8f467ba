"""The prompt texts beneath the data package: a rendered prompt reads back to its style and query."""

import pytest

from videoopd.grounding.prompts import PROMPT_STYLES, format_answer, match_prompt, render_prompt


@pytest.mark.parametrize("style", sorted(PROMPT_STYLES))
@pytest.mark.parametrize("query", ["a person opens the door.", 'someone says "hi" - then leaves', "x"])
def test_a_rendered_prompt_reads_back_to_its_style_and_query(style, query):
    assert match_prompt(render_prompt(query, style)) == (style, query)
    assert match_prompt("\n" + render_prompt(query, style) + " ") == (style, query)


def test_other_text_is_no_known_prompt():
    assert match_prompt("When does the dog jump? Answer in seconds.") is None
    assert match_prompt(PROMPT_STYLES["paper"].format(query="")) is None  # no query inside
    # The paper's prompt with a sentence appended is the user's own prompt, not the template.
    assert match_prompt(render_prompt("a dog jumps", "paper") + " Think first.") is None
    with pytest.raises(TypeError, match="text must be a str"):
        match_prompt(None)


def test_answers_per_style():
    assert format_answer((1.234, 5.0), "paper") == "1.23 to 5.00"
    assert format_answer((1.25, 5.0), "timelens") == "The event happens in 1.2 - 5.0 seconds."
    assert format_answer((1.0, 5.0), "time-r1") == "<answer>1.00 to 5.00</answer>"
