"""Difference texts from an LLM behind any OpenAI-compatible chat-completions endpoint.

vLLM, llama.cpp's server, Ollama and hosted APIs all speak `POST {base_url}/chat/completions`.
The client keeps at most `concurrency` requests in flight, retries 429/5xx/timeouts/connection
errors with exponential backoff (tenacity), and caches every raw answer on disk (SQLite) keyed by
(model, prompt, generation settings), so a rerun of the same pairs sends no request. Answers are
cleaned with the official PC-CLIP rules (`clean_text`).

Configuration: `LLMConfig.from_env()` reads `PCCLIP_LLM_BASE_URL`, `PCCLIP_LLM_MODEL` and
`PCCLIP_LLM_API_KEY` (falling back to `OPENAI_BASE_URL` / `OPENAI_API_KEY`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tenacity import (AsyncRetrying, retry_if_exception, stop_after_attempt,
                      wait_random_exponential)

from training.pairs.base import CaptionedPairSource, PairRecord, PairWriter

log = logging.getLogger(__name__)

DEFAULT_PROMPT = ("What is the visual difference between an image with a description of {T1} "
                  "and an image with a description of {T2}?")
CUT_MARKERS = ("Q:", "I hope", "#2:", "Note")
MIN_CHARS = 60


def clean_text(text: str) -> str | None:
    """The official cleaning: cut at "Q:", "I hope", "#2:" or "Note" (whichever comes first),
    strip, then drop (None) texts with non-ASCII characters or under 60 characters."""
    cut = len(text)
    for marker in CUT_MARKERS:
        at = text.find(marker)
        if at != -1:
            cut = min(cut, at)
    text = " ".join(text[:cut].split())
    if not text.isascii() or len(text) < MIN_CHARS:
        return None
    return text


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to ask. `prompt` has `{T1}` and `{T2}` for the two captions."""

    base_url: str
    model: str
    api_key: str | None = None
    prompt: str = DEFAULT_PROMPT
    system: str | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    concurrency: int = 8
    max_attempts: int = 6
    backoff_s: float = 1.0       # first retry waits up to this long, doubling each time
    backoff_max_s: float = 60.0
    timeout_s: float = 120.0
    cache_path: str | None = None

    @classmethod
    def from_env(cls, **overrides) -> LLMConfig:
        """Endpoint, model and key from the environment; keyword arguments override (None = unset)."""
        values = {
            "base_url": os.environ.get("PCCLIP_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL"),
            "model": os.environ.get("PCCLIP_LLM_MODEL"),
            "api_key": os.environ.get("PCCLIP_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        missing = [k for k in ("base_url", "model") if not values.get(k)]
        if missing:
            raise ValueError(f"LLM endpoint not configured: set {', '.join(missing)} "
                             "(PCCLIP_LLM_BASE_URL / PCCLIP_LLM_MODEL or --llm-base-url / --llm-model)")
        return cls(**values)

    def render(self, caption_a: str, caption_b: str) -> str:
        return self.prompt.replace("{T1}", caption_a.strip()).replace("{T2}", caption_b.strip())


class LLMError(RuntimeError):
    """The endpoint refused the request in a way retrying cannot fix (e.g. 401, 404)."""


class _Retryable(Exception):
    """A response worth retrying (429, 5xx)."""


def _is_retryable(err: BaseException) -> bool:
    return isinstance(err, (_Retryable, httpx.TimeoutException, httpx.TransportError))


class ResponseCache:
    """Raw LLM answers on disk (SQLite), keyed by a hash of (model, prompt, settings)."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path))
        self.db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, "
                        "prompt TEXT, response TEXT)")
        self.db.commit()

    @staticmethod
    def key(config: LLMConfig, prompt: str) -> str:
        parts = [config.model, config.system, prompt, config.temperature, config.max_tokens]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, model: str, prompt: str, response: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                        (key, model, prompt, response))
        self.db.commit()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self.db.close()


@dataclass
class ClientStats:
    requests: int = 0      # HTTP requests sent (including retries)
    retries: int = 0
    cache_hits: int = 0
    failed: int = 0        # prompts given up on after all attempts

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ChatClient:
    """Bounded-concurrency, retrying, caching chat-completions client."""

    config: LLMConfig
    cache: ResponseCache | None = None
    stats: ClientStats = field(default_factory=ClientStats)

    def __post_init__(self):
        if self.cache is None and self.config.cache_path:
            self.cache = ResponseCache(self.config.cache_path)

    def complete_all(self, prompts: Sequence[str], progress=None) -> list[str | None]:
        """Answers in prompt order (None where the endpoint kept failing)."""
        return asyncio.run(self._complete_all(list(prompts), progress))

    async def _complete_all(self, prompts: list[str], progress) -> list[str | None]:
        limit = asyncio.Semaphore(self.config.concurrency)
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        async with httpx.AsyncClient(base_url=self.config.base_url.rstrip("/") + "/",
                                     headers=headers, timeout=self.config.timeout_s) as http:
            async def one(prompt: str) -> str | None:
                try:
                    return await self._complete(http, limit, prompt)
                finally:
                    if progress is not None:
                        progress.update(1)
            return list(await asyncio.gather(*(one(p) for p in prompts)))

    async def _complete(self, http: httpx.AsyncClient, limit: asyncio.Semaphore, prompt: str):
        key = ResponseCache.key(self.config, prompt)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                self.stats.cache_hits += 1
                return cached
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_retryable),
            stop=stop_after_attempt(self.config.max_attempts),
            wait=wait_random_exponential(multiplier=self.config.backoff_s, max=self.config.backoff_max_s),
            before_sleep=lambda state: self._count_retry(state),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with limit:
                        answer = await self._post(http, prompt)
        except LLMError:
            raise
        except Exception as err:  # retries exhausted
            self.stats.failed += 1
            log.warning("LLM request failed after %d attempts: %s", self.config.max_attempts, err)
            return None
        if self.cache is not None:
            self.cache.put(key, self.config.model, prompt, answer)
        return answer

    def _count_retry(self, state) -> None:
        self.stats.retries += 1

    async def _post(self, http: httpx.AsyncClient, prompt: str) -> str:
        messages = ([{"role": "system", "content": self.config.system}] if self.config.system else [])
        messages.append({"role": "user", "content": prompt})
        body = {"model": self.config.model, "messages": messages,
                "temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        self.stats.requests += 1
        response = await http.post("chat/completions", json=body)
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise LLMError(f"{response.request.url} answered HTTP {response.status_code}: "
                           f"{response.text[:300]}")
        try:
            return response.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise _Retryable(f"malformed chat-completions response: {err}") from err


class LLMPairWriter(PairWriter):
    """Pairs from a captioned source; the text is the LLM's cleaned answer to the prompt.

    Pairs are drawn in rounds (a few more than still needed, to make up for answers the cleaning
    drops) and kept in draw order, so with a warm cache the same seed gives the same file.
    """

    name = "llm"

    def __init__(self, source: CaptionedPairSource, client: ChatClient, max_rounds: int = 10,
                 progress: bool = False):
        self.source = source
        self.client = client
        self.max_rounds = max_rounds
        self.progress = progress
        self.dropped = 0

    def pairs(self, n: int, rng: random.Random) -> Iterator[PairRecord]:
        from tqdm import tqdm

        config = self.client.config
        made = 0
        for _ in range(self.max_rounds):
            need = n - made
            if need <= 0:
                return
            batch = [self.source.sample(rng) for _ in range(need + need // 4 + 2)]
            prompts = [config.render(p.caption_a, p.caption_b) for p in batch]
            with tqdm(total=len(prompts), desc="llm", unit="prompt", disable=None if self.progress else True) as bar:
                answers = self.client.complete_all(prompts, progress=bar)
            for pair, prompt, answer in zip(batch, prompts, answers):
                text = clean_text(answer) if answer is not None else None
                if text is None:
                    self.dropped += 1
                    continue
                yield PairRecord(pair.image_a, pair.image_b, text, self.name, class_a=pair.class_a,
                                 class_b=pair.class_b, caption_a=pair.caption_a,
                                 caption_b=pair.caption_b, source={
                                     "model": config.model,
                                     "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest()[:16]})
                made += 1
                if made == n:
                    return
        log.warning("llm writer: %d of %d pairs after %d rounds (answers dropped by cleaning or "
                    "failed)", made, n, self.max_rounds)

