"""A local HTTP server that speaks enough of the Slack Web API for notifier tests.

It is a real ``ThreadingHTTPServer`` on 127.0.0.1, so clients go through their whole HTTP stack.
Being thread-based it works the same from sync tests and from code running an event loop (from
async code, call the blocking ``wait_for_calls`` via ``asyncio.to_thread``).

    with SlackFake(token="xoxb-test") as fake:
        client = AsyncWebClient(token="xoxb-test", base_url=fake.base_url)
        fake.fail_next(2, status=500)       # then HTTP 500 twice
        fake.rate_limit_next(1, retry_after=3)
        fake.error_next(1, "channel_not_found")
        fake.down(); fake.up()              # refuse connections, then listen on the same port again
        fake.message("C1", ts), fake.replies("C1", ts)  # a message as updated now, its thread replies
        fake.fail_next(1, status=500, after_storing=True)  # Slack stored the post, then failed anyway
        fake.ts_base = 1_704_000_000        # the epoch second the next posts' ts start from

A post to a "#name" channel is answered with the channel's id, as Slack does (``C`` and a stable
hash of the name, see :func:`channel_id`); everything else names a channel by id.

Messages keep the ``metadata`` they were posted with; ``conversations.history`` (newest first, roots
and unthreaded messages only) and ``conversations.replies`` (the root, then its replies, oldest
first) return it when asked with ``include_all_metadata``, and page with ``cursor`` as Slack does.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

METHODS = ("chat.postMessage", "chat.update", "conversations.history", "conversations.replies")
_READS = ("conversations.history", "conversations.replies")


@dataclass(frozen=True)
class Call:
    method: str
    body: dict[str, Any]
    received_at: float
    status: int  # the HTTP status answered
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.response.get("ok"))


# A recorded response holding this key was answered as a raw page (see ``garble_next``).
_PAGE = "__page__"
# Which calls a scripted failure applies to: (method, body) -> bool. None means any call.
When = Callable[[str, dict[str, Any]], bool] | None


@dataclass(frozen=True)
class _Failure:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    when: When = None
    after_storing: bool = False  # a post is stored (Slack did it) before the failure is answered
    page: str | None = None  # answered as this text/html page instead of JSON (a proxy's, say)

    def applies(self, method: str, body: dict[str, Any]) -> bool:
        return self.when is None or self.when(method, body)


class SlackFake:
    def __init__(self, token: str = "xoxb-test", host: str = "127.0.0.1") -> None:
        self.token = token
        self.host = host
        self.port = 0  # 0 until started: the OS picks a free port, reused by up() after down()
        self.calls: list[Call] = []
        self._failures: deque[_Failure] = deque()
        self._messages: dict[tuple[str, str], dict[str, Any]] = {}
        # A post's ts is "{ts_base}.{n:06d}" for the n-th post: increasing as strings and floats.
        self.ts_base = int(time.time())
        self._ts_seq = 0
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> SlackFake:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/api/"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def up(self) -> None:
        """Start listening (again, on the same port after :meth:`down`)."""
        if self._server is not None:
            return
        fake = self

        class Handler(_Handler):
            slack = fake

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        # A short poll interval keeps down() (shutdown waits for a poll) from costing 0.5s per test.
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="slack-fake", daemon=True
        )
        self._thread.start()

    def down(self) -> None:
        """Close the listening socket: clients get "connection refused" until :meth:`up`."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    # --- scripting failures --------------------------------------------------------------------

    # ``when`` limits a scripted failure to matching calls, e.g. ``lambda m, b: m == "chat.update"``
    # or ``lambda m, b: "thread_ts" in b`` (thread replies); other calls are answered normally.

    def fail_next(self, n: int, status: int = 500, when: When = None, *, after_storing: bool = False) -> None:
        """Answer the next ``n`` calls with an HTTP error status (``after_storing``: posts still stored)."""
        body = {"ok": False, "error": f"http_{status}"}
        self._script(n, _Failure(status, body, {}, when, after_storing))

    def rate_limit_next(self, n: int, retry_after: int = 1, when: When = None) -> None:
        """Answer the next ``n`` calls with HTTP 429 and a Retry-After header, as Slack does."""
        headers = {"Retry-After": str(retry_after)}
        self._script(n, _Failure(429, {"ok": False, "error": "ratelimited"}, headers, when))

    def error_next(self, n: int, error: str, when: When = None, *, after_storing: bool = False) -> None:
        """Answer the next ``n`` calls with HTTP 200 and ``{"ok": false, "error": error}``."""
        self._script(n, _Failure(200, {"ok": False, "error": error}, {}, when, after_storing))

    def garble_next(self, n: int, status: int = 200, when: When = None) -> None:
        """Answer the next ``n`` calls with an HTML page, not JSON: what a proxy in the way sends."""
        page = "<html><body>Gateway says hello</body></html>"
        self._script(n, _Failure(status, {}, {}, when, page=page))

    def _script(self, n: int, failure: _Failure) -> None:
        with self._cond:
            self._failures.extend([failure] * n)

    # --- inspection ----------------------------------------------------------------------------

    @property
    def delivered(self) -> list[Call]:
        """Calls that were answered ``ok: true``."""
        with self._cond:
            return [c for c in self.calls if c.ok]

    def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """The message as Slack holds it now (after any chat.update), or None if never posted."""
        with self._cond:
            found = self._messages.get((self._id_of(channel), ts))
            return None if found is None else dict(found)

    def replies(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The messages posted in the thread of ``thread_ts``, oldest first (the root excluded)."""
        with self._cond:
            channel = self._id_of(channel)
            found = [
                m for (c, _), m in self._messages.items() if c == channel and m.get("thread_ts") == thread_ts
            ]
            return [dict(m) for m in sorted(found, key=lambda m: float(m["ts"]))]

    def wait_for_calls(self, n: int, timeout: float = 5.0) -> list[Call]:
        """Block until at least ``n`` calls (of any outcome) were received; return them all."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.calls) >= n, timeout=timeout):
                raise TimeoutError(f"expected {n} Slack calls within {timeout}s, got {len(self.calls)}")
            return list(self.calls)

    # --- request handling (runs on server threads) ---------------------------------------------

    def _handle(
        self, method: str, body: dict[str, Any], auth: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._cond:
            status, response, headers = self._answer(method, body, auth)
            self.calls.append(Call(method, body, time.time(), status, response))
            self._cond.notify_all()
        return status, response, headers

    def _answer(
        self, method: str, body: dict[str, Any], auth: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        failure = next((f for f in self._failures if f.applies(method, body)), None)
        if failure is not None:
            self._failures.remove(failure)  # the first matching one: scripted failures keep their order
            if failure.after_storing:
                self._serve(method, body, auth)
            if failure.page is not None:
                return failure.status, {_PAGE: failure.page}, dict(failure.headers)
            return failure.status, dict(failure.body), dict(failure.headers)
        return self._serve(method, body, auth)

    def _serve(
        self, method: str, body: dict[str, Any], auth: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The answer of a Slack that works."""
        # Slack accepts the token as a Bearer header or a form field; it answers 200 either way.
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else body.get("token")
        if token != self.token:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        channel = body.get("channel")
        if not channel:
            return 200, {"ok": False, "error": "channel_not_found"}, {}
        if method in _READS and str(channel).startswith("#"):
            return 200, {"ok": False, "error": "channel_not_found"}, {}  # reads take a channel id only
        if method == "conversations.history":
            return 200, self._history(channel, body), {}
        if method == "conversations.replies":
            return 200, self._thread_of(channel, body), {}
        if method == "chat.postMessage":
            channel = self._id_of(channel)
            self._ts_seq += 1
            ts = f"{self.ts_base}.{self._ts_seq:06d}"
            message = {"text": body.get("text", ""), "blocks": body.get("blocks", []), "ts": ts}
            if body.get("thread_ts"):
                message["thread_ts"] = str(body["thread_ts"])
            if body.get("metadata"):
                message["metadata"] = body["metadata"]
            self._messages[(channel, ts)] = message
            return 200, {"ok": True, "channel": channel, "ts": ts, "message": dict(message)}, {}
        ts = str(body.get("ts", ""))
        if (channel, ts) not in self._messages:
            return 200, {"ok": False, "error": "message_not_found"}, {}
        message = self._messages[(channel, ts)]
        # Slack leaves a message's metadata as it was when chat.update does not name it.
        message.update({k: body[k] for k in ("text", "blocks", "metadata") if k in body})
        return (
            200,
            {"ok": True, "channel": channel, "ts": ts, "text": message["text"], "message": dict(message)},
            {},
        )

    def _id_of(self, channel: str) -> str:
        return channel_id(channel) if channel.startswith("#") else channel

    def _history(self, channel: str, body: dict[str, Any]) -> dict[str, Any]:
        """conversations.history: newest first; thread replies are not in a channel's history."""
        in_channel = [
            m
            for (c, ts), m in self._messages.items()
            if c == channel and m.get("thread_ts", ts) == ts and _in_range(ts, body)
        ]
        newest_first = sorted(in_channel, key=lambda m: float(m["ts"]), reverse=True)
        return self._page([self._as_listed(channel, m, body) for m in newest_first], body)

    def _thread_of(self, channel: str, body: dict[str, Any]) -> dict[str, Any]:
        """conversations.replies: the root first, then its replies in [oldest, latest], oldest first."""
        root = self._messages.get((channel, str(body.get("ts", ""))))
        if root is None:
            return {"ok": False, "error": "thread_not_found"}
        replies = [m for m in self.replies(channel, root["ts"]) if _in_range(m["ts"], body)]
        return self._page([self._as_listed(channel, m, body) for m in [root, *replies]], body)

    def _as_listed(self, channel: str, message: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        """A message as the conversations.* methods list it: a root with replies names its thread."""
        listed = {k: v for k, v in message.items() if k != "metadata" or _flag(body, "include_all_metadata")}
        reply_count = len(self.replies(channel, message["ts"]))
        if reply_count and "thread_ts" not in message:
            listed |= {"thread_ts": message["ts"], "reply_count": reply_count}
        return listed

    @staticmethod
    def _page(messages: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
        start, limit = int(body.get("cursor") or 0), int(body.get("limit") or 100)
        more = start + limit < len(messages)
        return {
            "ok": True,
            "messages": messages[start : start + limit],
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }


def channel_id(name: str) -> str:
    """The id the fake gives the channel ``#name``: stable, so every fake and test agrees on it."""
    return "C" + hashlib.sha256(name.encode()).hexdigest()[:10].upper()


def _in_range(ts: str, body: dict[str, Any]) -> bool:
    """Slack's oldest/latest bounds, both exclusive (the default, ``inclusive`` unset)."""
    oldest, latest = body.get("oldest"), body.get("latest")
    return (oldest is None or float(ts) > float(oldest)) and (latest is None or float(ts) < float(latest))


def _flag(body: dict[str, Any], name: str) -> bool:
    # A bool arrives as true/1 in a JSON body and as "1"/"true" in a query string or form.
    return str(body.get(name, "")).lower() in ("1", "true")


class _Handler(BaseHTTPRequestHandler):
    slack: SlackFake
    # HTTP/1.0: one request per connection, so down() leaves no kept-alive connection behind.
    protocol_version = "HTTP/1.0"

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._dispatch(_parse_body(self.headers, raw))

    def do_GET(self) -> None:
        # slack-sdk sends the conversations.* reads as GET with the arguments in the query string.
        self._dispatch(dict(parse_qsl(urlsplit(self.path).query)))

    def _dispatch(self, body: dict[str, Any]) -> None:
        method = self.path.removeprefix("/api/").split("?", 1)[0]
        if method not in METHODS:
            self._send(404, {"ok": False, "error": "unknown_method"}, {})
            return
        auth = self.headers.get("Authorization", "")
        status, response, headers = self.slack._handle(method, body, auth)
        self._send(status, response, headers)

    def _send(self, status: int, response: dict[str, Any], headers: dict[str, str]) -> None:
        page = response.get(_PAGE)
        payload = page.encode() if isinstance(page, str) else json.dumps(response).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if page else "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet; calls are recorded on the fake instead


def _parse_body(headers: Any, raw: bytes) -> dict[str, Any]:
    """JSON or form body, as slack-sdk sends either; JSON-in-form fields (blocks) are decoded."""
    if headers.get_content_type() == "application/json":
        return dict(json.loads(raw or b"{}"))
    body: dict[str, Any] = dict(parse_qsl(raw.decode()))
    for key in ("blocks", "attachments", "metadata"):
        if isinstance(body.get(key), str):
            body[key] = json.loads(body[key])
    return body
