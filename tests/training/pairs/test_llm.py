"""The llm writer against a real local chat-completions server (tests/training/pairs/chat_server.py)."""

import random

import pytest

from tests.training.pairs.chat_server import ChatServer, captions_in
from training.data import load_coco_captions
from training.pairs.base import CocoCaptionSource, write_jsonl
from training.pairs.llm import (DEFAULT_PROMPT, ChatClient, LLMConfig, LLMError, LLMPairWriter,
                                ResponseCache, clean_text)

LONG = "The first image shows a red bus on a city street, while the second shows a quiet beach at dusk."


def config(server, tmp_path=None, **kw):
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    return LLMConfig(base_url=server.base_url, model="test-model",
                     cache_path=str(tmp_path / "cache.sqlite") if tmp_path else None, **kw)


def test_clean_text_official_rules():
    assert clean_text(LONG) == LONG
    assert clean_text(LONG + " Q: what else differs? A: nothing") == LONG
    assert clean_text(LONG + "\n\nI hope this helps!") == LONG
    assert clean_text(LONG + " #2: another difference") == LONG
    assert clean_text(LONG + " Note that captions can be wrong.") == LONG
    assert clean_text("Note: " + LONG) is None            # cut to nothing
    assert clean_text("The first image is brighter.") is None  # under 60 characters
    assert clean_text(LONG.replace("beach", "plage \u00e0 la mer")) is None  # non-ASCII
    assert clean_text("  " + LONG.replace(" ", "\n ", 3) + "  ") == LONG  # whitespace normalised


def test_default_prompt_template_and_body(tmp_path):
    with ChatServer() as server:
        client = ChatClient(config(server, api_key="sk-test"))
        answers = client.complete_all([config(server).render("a cat", "a dog")])
    assert DEFAULT_PROMPT.startswith("What is the visual difference between an image with a description of")
    body = server.bodies[0]
    assert body["model"] == "test-model"
    assert body["messages"] == [{"role": "user", "content":
                                 "What is the visual difference between an image with a description "
                                 "of a cat and an image with a description of a dog?"}]
    assert answers[0].startswith("The first image shows a cat")
    custom = LLMConfig(base_url="x", model="m", prompt="Compare {T1} with {T2}.")
    assert custom.render("a cat", "a dog") == "Compare a cat with a dog."


@pytest.mark.parametrize("status", [429, 503])
def test_retries_with_backoff_on_429_and_5xx(status):
    prompts = [f"What is the visual difference between an image with a description of a{i} and "
               f"an image with a description of b{i}?" for i in range(4)]
    with ChatServer(fail_first=3, fail_status=status) as server:
        client = ChatClient(config(server, concurrency=1))
        answers = client.complete_all(prompts)
    assert all(a is not None and captions_in(p)[0] in a for p, a in zip(prompts, answers))
    assert server.requests == 4 + 3 and client.stats.retries == 3 and client.stats.failed == 0


def test_timeouts_are_retried_then_given_up():
    with ChatServer(delay_s=0.5) as server:
        client = ChatClient(config(server, timeout_s=0.1, max_attempts=3))
        answers = client.complete_all(["What is the visual difference between an image with a "
                                       "description of x and an image with a description of y?"])
    assert answers == [None]
    assert client.stats.requests == 3 and client.stats.retries == 2 and client.stats.failed == 1


def test_client_errors_are_not_retried():
    with ChatServer(api_key="right") as server:
        client = ChatClient(config(server, api_key="wrong"))
        with pytest.raises(LLMError, match="401"):
            client.complete_all(["What is the visual difference between an image with a "
                                 "description of x and an image with a description of y?"])
    assert server.requests == 1


def test_concurrency_is_bounded():
    prompts = [f"What is the visual difference between an image with a description of a{i} and "
               f"an image with a description of b{i}?" for i in range(12)]
    with ChatServer(delay_s=0.15) as server:
        ChatClient(config(server, concurrency=3)).complete_all(prompts)
    assert server.requests == 12
    assert 2 <= server.max_in_flight <= 3


def test_writer_cache_makes_rerun_free_and_identical(tmp_path, data_dir):
    source = CocoCaptionSource(load_coco_captions(data_dir, "train"))
    with ChatServer() as server:
        first = LLMPairWriter(source, ChatClient(config(server, tmp_path)))
        write_jsonl(first.pairs(20, random.Random(5)), tmp_path / "a.jsonl")
        sent = server.requests
        second = LLMPairWriter(source, ChatClient(config(server, tmp_path)))
        write_jsonl(second.pairs(20, random.Random(5)), tmp_path / "b.jsonl")
    assert sent >= 20 and server.requests == sent  # the rerun sent nothing
    assert second.client.stats.cache_hits >= 20 and second.client.stats.requests == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert len(ResponseCache(tmp_path / "cache.sqlite")) == sent


def test_writer_applies_cleaning_and_fills_records(tmp_path, data_dir):
    def answer(prompt):  # every third answer is cut, every fifth has non-ASCII, every seventh is short
        t1, t2 = captions_in(prompt)
        n = sum(map(ord, prompt))
        if n % 7 == 0:
            return "Different."
        text = f"The first image shows {t1}, whereas the second image shows {t2} instead."
        if n % 5 == 0:
            return text + " \u2013 caf\u00e9"
        if n % 3 == 0:
            return text + "\nQ: anything else?\nA: no"
        return text
    source = CocoCaptionSource(load_coco_captions(data_dir, "train"))
    with ChatServer(answer=answer) as server:
        writer = LLMPairWriter(source, ChatClient(config(server, tmp_path)))
        records = list(writer.pairs(30, random.Random(1)))
    assert len(records) == 30 and writer.dropped > 0
    for r in records:
        assert r.writer == "llm" and r.text.isascii() and len(r.text) >= 60
        assert "Q:" not in r.text and r.text.endswith("instead.")
        assert r.caption_a in r.text and r.caption_b in r.text
        assert r.image_a.startswith("coco-mini/train2017/") and r.image_a != r.image_b
        assert r.source["model"] == "test-model" and len(r.source["prompt_sha256"]) == 16


def test_config_from_env(monkeypatch):
    monkeypatch.setenv("PCCLIP_LLM_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("PCCLIP_LLM_MODEL", "llama")
    monkeypatch.setenv("PCCLIP_LLM_API_KEY", "sk-1")
    cfg = LLMConfig.from_env(concurrency=2, model=None)
    assert (cfg.base_url, cfg.model, cfg.api_key, cfg.concurrency) == ("http://127.0.0.1:1/v1", "llama", "sk-1", 2)
    monkeypatch.delenv("PCCLIP_LLM_MODEL")
    with pytest.raises(ValueError, match="model"):
        LLMConfig.from_env()
