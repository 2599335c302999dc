"""An OpenAI-compatible chat endpoint as the agent (e.g. vLLM serving the 7B model).

Images travel inline as PNG data URLs; the reply streams as server-sent events.
The API key is read from an environment variable (``IBIS_API_KEY`` by default)
at request time and is never stored in :meth:`identity`, logs or trajectory files.
Connection failures and 5xx answers are retried with back-off before any token
has arrived; a stream cut mid-answer is an error, not a silent retry.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

from ..errors import Cancelled, ModelError
from .base import Policy, PolicyRequest, TextSink


def image_data_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_openai_messages(messages: list[dict]) -> list[dict]:
    out = []
    for message in messages:
        content = []
        for item in message["content"]:
            if item["type"] == "image":
                content.append({"type": "image_url", "image_url": {"url": image_data_url(item["image"])}})
            else:
                content.append({"type": "text", "text": item["text"]})
        out.append({"role": message["role"], "content": content})
    return out


class RemotePolicy(Policy):
    name = "remote"

    def __init__(
        self,
        base_url: str,
        model: str = "ibis",
        api_key_env: str = "IBIS_API_KEY",
        timeout: float = 60.0,
        retries: int = 2,
        max_tokens: int = 512,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.retries = retries
        self.max_tokens = max_tokens

    def identity(self) -> dict:
        return {"name": self.name, "url": self.base_url, "model": self.model}

    def _request(self, body: bytes) -> urllib.request.Request:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers, method="POST")

    def _open(self, body: bytes):
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                return urllib.request.urlopen(self._request(body), timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or attempt == self.retries:
                    raise ModelError(f"the endpoint {self.base_url} answered HTTP {exc.code} ({exc.reason})") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == self.retries:
                    reason = getattr(exc, "reason", exc)
                    raise ModelError(f"cannot reach {self.base_url}: {reason}") from None
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def respond(self, request: PolicyRequest, on_text: TextSink | None = None, cancel: threading.Event | None = None) -> str:
        cancel = cancel or threading.Event()
        body = json.dumps(
            {
                "model": self.model,
                "messages": to_openai_messages(request.messages),
                "stream": True,
                "temperature": request.temperature,
                **({"seed": request.seed} if request.temperature > 0 else {}),
                "max_tokens": self.max_tokens,
            }
        ).encode()
        pieces: list[str] = []
        response = self._open(body)
        try:
            for raw in response:
                if cancel.is_set():
                    raise Cancelled("stopped during generation")
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    delta = json.loads(data)["choices"][0].get("delta", {}).get("content") or ""
                except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                    raise ModelError(f"the endpoint sent an unreadable event: {data[:80]}") from None
                if delta:
                    pieces.append(delta)
                    if on_text is not None:
                        on_text(delta)
        except TimeoutError:
            raise ModelError(f"{self.base_url} stopped answering for {self.timeout:g} s mid-reply") from None
        finally:
            response.close()
        return "".join(pieces)
