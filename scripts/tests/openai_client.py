"""Calls `safeguard serve` with the official `openai` Python client (moderations API).

Usage: openai_client.py BASE_URL API_KEY UNSAFE_IMAGE SAFE_IMAGE
BASE_URL ends in /v1. The unsafe image must be flagged under L3 with the `sexual` category,
the safe one not; a wrong key must raise AuthenticationError. Prints "ok" on success.
"""

import base64
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

    print("ok")


if __name__ == "__main__":
    main()
