"""Calls `safeguard serve` with the official `openai` Python client: moderations and chat
completions.

Usage: openai_client.py BASE_URL API_KEY UNSAFE_IMAGE SAFE_IMAGE [REFERENCE_JSON]
BASE_URL ends in /v1. The unsafe image must be flagged under L3 with the `sexual` category,
the safe one not; a wrong key must raise AuthenticationError. With REFERENCE_JSON (the tiny
guard's `reference.json`), `client.chat.completions.create` is called with the reference L3
verdict prompt of the unsafe image, plain and streamed, with logprobs: the answer must be the
reference's, and P(unsafe) renormalised from the first token's top logprobs must equal the
reference's to 1e-5. Prints "ok" on success.
"""

import base64
import json
import math
import sys

import openai
from openai import OpenAI


def data_url(path):
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def moderate(client, path, policy="L3"):
    response = client.moderations.create(
        model="safeguard",
        input=[{"type": "image_url", "image_url": {"url": data_url(path)}}],
        extra_body={"policy": policy},
    )
    assert response.id.startswith("modr-"), response.id
    assert len(response.results) == 1, response
    return response.results[0]


def reference_chat(path):
    """The L3 verdict reference case of image-a as OpenAI messages, its answer and P(unsafe)."""
    with open(path) as f:
        cases = json.load(f)["cases"]
    case = next(c for c in cases if c["policy"] == "L3" and c["format"] == "verdict"
                and c["rule"] is None and c["image"] == "image-a.png")
    body = case["prompt"].removeprefix("<|im_start|>system\n")
    system, rest = body.split("<|im_end|>\n<|im_start|>user\n", 1)
    user = rest.split("<|im_end|>\n", 1)[0]
    before, after = user.split("<|vision_start|>", 1)
    after = after.split("<|vision_end|>", 1)[1]
    image = path.rsplit("/", 1)[0] + "/" + case["image"]
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": [
            {"type": "text", "text": before},
            {"type": "image_url", "image_url": {"url": data_url(image)}},
            {"type": "text", "text": after}]},
    ]
    return messages, case["generated_text"].replace("<|im_end|>", ""), case["p_unsafe"]


def p_unsafe_of(top_logprobs):
    lp = {t.token: t.logprob for t in top_logprobs}
    u, s = math.exp(lp["unsafe"]), math.exp(lp["safe"])
    return u / (u + s)


def chat(client, reference):
    messages, answer, p_unsafe = reference_chat(reference)
    completion = client.chat.completions.create(
        model="tiny-guard", messages=messages, temperature=0, max_tokens=16,
        logprobs=True, top_logprobs=5)
    choice = completion.choices[0]
    assert choice.message.content == answer, choice
    assert choice.finish_reason == "stop", choice
    assert completion.usage.completion_tokens >= 1, completion.usage
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == answer, content
    assert bytes(b for t in content for b in t.bytes).decode() == answer, content
    first = content[0]
    assert len(first.top_logprobs) == 5, first
    assert first.top_logprobs[0].token == first.token, first
    assert all(a.logprob >= b.logprob for a, b in zip(first.top_logprobs, first.top_logprobs[1:]))
    got = p_unsafe_of(first.top_logprobs)
    assert abs(got - p_unsafe) < 1e-5, (got, p_unsafe)

    stream = client.chat.completions.create(
        model="tiny-guard", messages=messages, temperature=0, max_tokens=16,
        logprobs=True, top_logprobs=5, stream=True, stream_options={"include_usage": True})
    text, tokens, finish, usage = "", [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.logprobs is not None and c.logprobs.content:
                tokens.extend(c.logprobs.content)
            finish = c.finish_reason or finish
    assert text == answer, text
    assert finish == "stop", finish
    assert usage is not None and usage.completion_tokens == completion.usage.completion_tokens
    assert [t.token for t in tokens] == [t.token for t in content], tokens
    assert abs(p_unsafe_of(tokens[0].top_logprobs) - p_unsafe) < 1e-5


def main():
    base_url, api_key, unsafe_image, safe_image = sys.argv[1:5]
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

    flagged = moderate(client, unsafe_image)
    assert flagged.flagged is True, flagged
    assert flagged.categories.sexual is True, flagged.categories
    assert 0.0 <= flagged.category_scores.sexual <= 1.0, flagged.category_scores
    assert flagged.category_applied_input_types.sexual == ["image"], flagged
    extra = flagged.to_dict()
    assert extra["safeguard"]["verdict"] == "unsafe", extra
    assert "violence-graphic" in extra["categories"], extra

    clean = moderate(client, safe_image)
    assert clean.flagged is False, clean
    assert clean.categories.sexual is False, clean.categories

    try:
        OpenAI(base_url=base_url, api_key="wrong", max_retries=0).moderations.create(
            model="safeguard",
            input=[{"type": "image_url", "image_url": {"url": data_url(safe_image)}}],
        )
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401

    try:
        client.moderations.create(model="safeguard", input="text only")
        raise AssertionError("text-only input was accepted")
    except openai.BadRequestError as e:
        assert e.body["code"] == "image_required" or e.body.get("error", {}).get("code") == "image_required", e.body

    if len(sys.argv) > 5:
        chat(client, sys.argv[5])

    print("ok")


if __name__ == "__main__":
    main()
