"""Case threads in Slack: delivery with retries, crash recovery and the console, against SlackFake.

Case and event dicts come from the real case core (tests/sinks/case_story.py), so delivery is
tested on exactly what the worker will hand the notifier; what the messages say is tested in
test_slack_messages.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from cases.identity import CaseBook, SignalIdentity
from cases.risk import DEFAULT_MATRIX
from cases.view import view_of, view_to_dict
from sinks.slack_messages import root_message, thread_reply
from sinks.slack_threads import (
    CASE_EVENT_METADATA,
    ConsoleThreadNotifier,
    SlackPermanentError,
    SlackThreadNotifier,
    ThreadRef,
    make_thread_notifier,
)
from tests.sinks.case_story import CELL, STORY, T0, Step, Story, alert
from tests.slack_fake import SlackFake, channel_id

TOKEN = "xoxb-test"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


# --- Slack delivery ----------------------------------------------------------------------------


class RecordingSleep:
    """Stands in for asyncio.sleep: records delays, optionally acts on the n-th sleep."""

    def __init__(self, on_sleep: Callable[[int], None] | None = None) -> None:
        self.delays: list[float] = []
        self._on_sleep = on_sleep

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self._on_sleep is not None:
            self._on_sleep(len(self.delays))
        await asyncio.sleep(0)


def notifier(fake: SlackFake, sleep: Any, **kwargs: Any) -> SlackThreadNotifier:
    return SlackThreadNotifier(
        TOKEN, "C1", base_url=fake.base_url, api_base_url="http://rw.example/", sleep=sleep, **kwargs
    )


async def deliver_all(slack: Any, steps: list[Step], thread: ThreadRef | None = None) -> list[ThreadRef]:
    """What the worker does: one event after the other, each thread ref fed to the next call."""
    refs = []
    for case, event in steps:
        thread = await slack.deliver(case, event, thread)
        refs.append(thread)
    return refs


def test_first_event_posts_the_root_later_ones_reply_in_thread_and_update_it() -> None:
    steps = [STORY[label] for label in ("open", "evidence-alert", "take")]
    with SlackFake(token=TOKEN) as fake:
        refs = run(deliver_all(notifier(fake, RecordingSleep()), steps))
        calls = [(c.method, c.body.get("thread_ts"), c.body.get("ts")) for c in fake.calls]
        root = fake.message("C1", refs[0].ts)
        replies = fake.replies("C1", refs[0].ts)

    ts = refs[0].ts
    assert refs == [ThreadRef("C1", ts)] * 3
    assert calls == [
        ("conversations.history", None, None),  # no root of this case yet: post one
        ("chat.postMessage", None, None),
        ("chat.postMessage", ts, None),
        ("chat.update", None, ts),
        ("chat.postMessage", ts, None),
        ("chat.update", None, ts),
    ]
    url = f"http://rw.example/v1/cases/{steps[0][0]['case_id']}"
    assert root is not None
    assert (root["text"], root["blocks"]) == root_message(steps[-1][0], url)
    assert [r["text"] for r in replies] == [thread_reply(c, e) for c, e in steps[1:]]


def test_a_case_whose_first_event_is_not_open_gets_a_root_and_a_reply() -> None:
    book = CaseBook()
    event = book.silence(SignalIdentity.cell(*CELL), until=T0 + 60, actor="ana", at=T0, reason="bench test")
    case = view_to_dict(view_of(book.case(event.case_id), book.identity_of(event.case_id), DEFAULT_MATRIX))  # type: ignore[arg-type]
    with SlackFake(token=TOKEN) as fake:
        ref = run(notifier(fake, RecordingSleep()).deliver(case, event.to_dict(), None))
        calls = [(c.method, c.body.get("thread_ts")) for c in fake.calls]
        [reply] = fake.replies("C1", ref.ts)

    assert calls == [
        ("conversations.history", None),
        ("chat.postMessage", None),
        ("chat.postMessage", ref.ts),
    ]  # no update of a fresh root, no lookup of its replies
    assert reply["text"] == "*ana* silenced alerts until 2024-01-02T03:05:05Z: bench test"


def is_root_post(method: str, body: dict[str, Any]) -> bool:
    return method == "chat.postMessage" and "thread_ts" not in body


def test_retries_through_500_and_429_with_retry_after() -> None:
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        fake.fail_next(1, status=500, when=is_root_post)
        fake.rate_limit_next(1, retry_after=7, when=is_root_post)
        ref = run(notifier(fake, sleep).deliver(*STORY["open"], None))
        calls = [(c.method, c.status) for c in fake.calls]

    assert ref.channel == "C1"
    assert calls == [
        ("conversations.history", 200),
        ("chat.postMessage", 500),
        ("conversations.history", 200),  # a 500 may have posted it after all: look before posting again
        ("chat.postMessage", 429),
        ("chat.postMessage", 200),
    ]
    assert sleep.delays == [0.5, 7.0]  # backoff, then the server's Retry-After


def test_replies_and_updates_are_retried_without_duplicates() -> None:
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        fake.error_next(2, "internal_error", when=lambda _m, body: "thread_ts" in body)
        fake.fail_next(1, status=503, when=lambda method, _b: method == "chat.update")
        fake.rate_limit_next(1, retry_after=2, when=lambda method, _b: method == "chat.update")
        refs = run(deliver_all(notifier(fake, sleep, max_backoff_s=0.75), [STORY["open"], STORY["take"]]))
        outcome = [(c.method, c.status, c.ok) for c in fake.calls]
        replies = fake.replies("C1", refs[0].ts)

    assert outcome == [
        ("conversations.history", 200, True),
        ("chat.postMessage", 200, True),
        ("chat.postMessage", 200, False),
        ("conversations.replies", 200, True),  # internal_error may have posted it: not there, post again
        ("chat.postMessage", 200, False),
        ("conversations.replies", 200, True),
        ("chat.postMessage", 200, True),
        ("chat.update", 503, False),
        ("chat.update", 429, False),
        ("chat.update", 200, True),
    ]
    assert sleep.delays == [0.5, 0.75, 0.5, 2.0]  # each call starts its own backoff, capped
    assert len(replies) == 1


def test_events_during_an_outage_are_all_delivered_in_order_when_slack_returns() -> None:
    labels = ["open", "evidence-alert", "evidence-note", "assess", "take", "assign", "acknowledge", "score"]
    steps = [STORY[label] for label in labels]
    with SlackFake(token=TOKEN) as fake:
        fake.down()
        back = threading.Timer(0.3, fake.up)  # Slack returns while the first delivery is retrying
        back.start()
        try:
            slack = notifier(fake, asyncio.sleep, initial_backoff_s=0.01, max_backoff_s=0.05)
            refs = run(deliver_all(slack, steps))
        finally:
            back.join()
        root = fake.message("C1", refs[0].ts)
        replies = fake.replies("C1", refs[0].ts)
        posts = [c for c in fake.delivered if c.method == "chat.postMessage"]

    assert {r.ts for r in refs} == {refs[0].ts}
    assert len(posts) == len(steps)  # one root, one reply per later event: nothing lost, nothing doubled
    assert [r["text"] for r in replies] == [thread_reply(c, e) for c, e in steps[1:]]
    assert [float(r["ts"]) for r in replies] == sorted(float(r["ts"]) for r in replies)
    last_case = steps[-1][0]
    assert root is not None
    assert root["blocks"] == root_message(last_case, slack.case_url(last_case["case_id"]))[1]


@pytest.mark.parametrize("error", ["channel_not_found", "invalid_auth", "invalid_blocks"])
def test_permanent_error_on_the_root_raises_at_once(error: str) -> None:
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        fake.error_next(1, error, when=lambda method, _b: method == "chat.postMessage")
        with pytest.raises(SlackPermanentError) as info:
            run(notifier(fake, sleep).deliver(*STORY["open"], None))
        assert [c.method for c in fake.calls] == ["conversations.history", "chat.postMessage"]

    assert info.value.error == error
    assert info.value.thread is None
    assert sleep.delays == []


def test_permanent_error_after_the_root_carries_the_thread() -> None:
    book = CaseBook()
    event = book.silence(SignalIdentity.cell(*CELL), until=T0 + 60, actor="ana", at=T0, reason="bench test")
    case = view_to_dict(view_of(book.case(event.case_id), book.identity_of(event.case_id), DEFAULT_MATRIX))  # type: ignore[arg-type]
    with SlackFake(token=TOKEN) as fake:
        fake.error_next(1, "msg_too_long", when=lambda _m, body: "thread_ts" in body)
        with pytest.raises(SlackPermanentError) as info:
            run(notifier(fake, RecordingSleep()).deliver(case, event.to_dict(), None))
        root_ts = fake.calls[1].response["ts"]  # after the history lookup

    assert info.value.error == "msg_too_long"
    assert info.value.thread == ThreadRef("C1", root_ts)  # the caller keeps it: no second root later


def test_update_of_a_vanished_root_is_permanent() -> None:
    with SlackFake(token=TOKEN) as fake:
        gone = ThreadRef("C1", "1.000001")
        with pytest.raises(SlackPermanentError, match="message_not_found"):
            run(notifier(fake, RecordingSleep()).deliver(*STORY["take"], gone))


# --- crash safety: metadata and the lookups before posting --------------------------------------


SOURCE = "http://rw.example"  # the api_base_url of notifier(), without its trailing slash


def metadata(case_id: str, seq: int, source: str = SOURCE) -> dict[str, Any]:
    payload = {"case_id": case_id, "seq": seq, "source": source}
    return {"event_type": CASE_EVENT_METADATA, "event_payload": payload}


def roots_in(fake: SlackFake, channel: str = "C1") -> list[Any]:
    """The root (unthreaded) messages Slack accepted in ``channel``."""
    return [
        c
        for c in fake.delivered
        if c.method == "chat.postMessage" and c.body["channel"] == channel and "thread_ts" not in c.body
    ]


def test_roots_and_replies_carry_the_case_id_and_the_events_seq_as_metadata() -> None:
    steps = [STORY[label] for label in ("open", "evidence-alert", "take")]
    case_id = steps[0][0]["case_id"]
    with SlackFake(token=TOKEN) as fake:
        refs = run(deliver_all(notifier(fake, RecordingSleep()), steps))
        root = fake.message("C1", refs[0].ts)
        replies = fake.replies("C1", refs[0].ts)

    assert root is not None
    assert root["metadata"] == metadata(case_id, steps[0][1]["seq"])  # kept through the root updates
    assert [r["metadata"] for r in replies] == [metadata(case_id, e["seq"]) for _c, e in steps[1:]]


def test_a_root_posted_before_a_crash_is_adopted_and_later_replies_go_into_it() -> None:
    with SlackFake(token=TOKEN) as fake:
        # The worker that posted the root died before saving it: the replay knows no thread.
        first = run(notifier(fake, RecordingSleep()).deliver(*STORY["open"], None))
        fake.calls.clear()
        restarted = notifier(fake, RecordingSleep())
        again = run(restarted.deliver(*STORY["open"], None, check_posted=True))
        refs = run(deliver_all(restarted, [STORY["evidence-alert"], STORY["take"]], again))
        methods = [c.method for c in fake.calls]
        roots = roots_in(fake)
        replies = fake.replies("C1", first.ts)

    assert again == first and refs == [first] * 2
    assert roots == []  # after the restart: no root posted at all, the one in the channel is the thread
    assert methods[:2] == ["conversations.history", "chat.update"]  # one lookup, then the root refreshed
    assert [r["text"] for r in replies] == [
        thread_reply(c, e) for c, e in (STORY["evidence-alert"], STORY["take"])
    ]


def test_a_root_with_replies_is_adopted_but_not_another_cases_root() -> None:
    other = Story().alert(alert("b1", model="M-200"))
    with SlackFake(token=TOKEN) as fake:
        slack = notifier(fake, RecordingSleep())
        first = run(deliver_all(slack, [STORY["open"], STORY["evidence-alert"]]))[0]
        other_ref = run(slack.deliver(*other, None))
        again = run(notifier(fake, RecordingSleep()).deliver(*STORY["open"], None))

    assert other_ref.ts != first.ts  # the other case's root did not pass for this case's
    assert again == first  # history lists a root with replies with thread_ts == ts: still the root


def test_a_reply_posted_before_a_crash_is_not_posted_again_on_replay() -> None:
    steps = [STORY[label] for label in ("open", "evidence-alert", "take")]
    with SlackFake(token=TOKEN) as fake:
        refs = run(deliver_all(notifier(fake, RecordingSleep()), steps))
        normal = [c.method for c in fake.calls]
        fake.calls.clear()
        # Replay of the last event after a crash before its position was saved.
        replayed = run(notifier(fake, RecordingSleep()).deliver(*steps[-1], refs[0], check_posted=True))
        replay = [(c.method, c.body.get("thread_ts")) for c in fake.calls]
        replies = fake.replies("C1", refs[0].ts)
        root = fake.message("C1", refs[0].ts)

    assert normal.count("conversations.history") == 1  # for the root only
    assert "conversations.replies" not in normal  # normal operation never looks at replies
    assert replayed == refs[0]
    assert replay == [("conversations.replies", None), ("chat.update", None)]  # found: no second reply
    assert [r["text"] for r in replies] == [thread_reply(c, e) for c, e in steps[1:]]
    url = f"http://rw.example/v1/cases/{steps[-1][0]['case_id']}"
    assert root is not None and root["blocks"] == root_message(steps[-1][0], url)[1]


def test_a_checked_reply_that_is_not_in_the_thread_is_posted() -> None:
    with SlackFake(token=TOKEN) as fake:
        ref = run(notifier(fake, RecordingSleep()).deliver(*STORY["open"], None))
        run(notifier(fake, RecordingSleep()).deliver(*STORY["evidence-alert"], ref, check_posted=True))
        [reply] = fake.replies("C1", ref.ts)

    assert reply["text"] == thread_reply(*STORY["evidence-alert"])


def test_a_refused_lookup_posts_anyway_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    other = Story().alert(alert("b1", model="M-200"))
    refused = lambda method, _b: method.startswith("conversations.")  # noqa: E731
    with SlackFake(token=TOKEN) as fake:
        fake.error_next(3, "missing_scope", when=refused)
        slack = notifier(fake, RecordingSleep())
        with caplog.at_level(logging.WARNING, logger="sinks.slack_threads"):
            ref = run(slack.deliver(*STORY["open"], None))
            run(slack.deliver(*other, None))
            run(slack.deliver(*STORY["evidence-alert"], ref, check_posted=True))
        roots = roots_in(fake)
        replies = fake.replies("C1", ref.ts)

    assert len(roots) == 2  # both cases' roots posted: nothing lost
    assert [r["text"] for r in replies] == [thread_reply(*STORY["evidence-alert"])]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "missing_scope" in warnings[0], warnings


def test_a_channel_configured_by_name_posts_without_a_lookup() -> None:
    with SlackFake(token=TOKEN) as fake:
        slack = SlackThreadNotifier(TOKEN, "#quality", base_url=fake.base_url, sleep=RecordingSleep())
        run(slack.deliver(*STORY["open"], None))
        methods = [c.method for c in fake.calls]

    assert methods == ["chat.postMessage"]  # history takes a channel id, which a "#name" is not


def test_the_fake_lists_history_and_replies_as_slack_does() -> None:
    async def scenario(fake: SlackFake) -> tuple[list[Any], ...]:
        client = AsyncWebClient(token=TOKEN, base_url=fake.base_url)
        root = await client.chat_postMessage(channel="C9", text="root", metadata=metadata("k", 1))
        for seq in (2, 3, 4):
            await client.chat_postMessage(
                channel="C9", thread_ts=root["ts"], text=f"r{seq}", metadata=metadata("k", seq)
            )
        await client.chat_postMessage(channel="C9", text="later")
        history = [await client.conversations_history(channel="C9", limit=1, include_all_metadata=True)]
        cursor = history[0]["response_metadata"]["next_cursor"]
        history.append(await client.conversations_history(channel="C9", limit=1, cursor=cursor))
        thread = await client.conversations_replies(
            channel="C9", ts=root["ts"], limit=3, include_all_metadata=True
        )
        rest = await client.conversations_replies(
            channel="C9", ts=root["ts"], cursor=thread["response_metadata"]["next_cursor"]
        )
        return history, [thread, rest]

    with SlackFake(token=TOKEN) as fake:
        history, replies = run(scenario(fake))

    assert [m["text"] for page in history for m in page["messages"]] == ["later", "root"]  # newest first
    assert history[1]["response_metadata"]["next_cursor"] == ""
    listed_root = history[1]["messages"][0]
    assert listed_root["thread_ts"] == listed_root["ts"] and listed_root["reply_count"] == 3
    assert "metadata" not in listed_root  # asked without include_all_metadata
    assert [m["text"] for m in replies[0]["messages"]] == ["root", "r2", "r3"]
    assert [m["metadata"]["event_payload"]["seq"] for m in replies[0]["messages"]] == [1, 2, 3]
    assert [m["text"] for m in replies[1]["messages"]] == ["r4"]


def test_the_fake_reads_metadata_from_a_form_body_too() -> None:
    with SlackFake(token=TOKEN) as fake:
        form = {"token": TOKEN, "channel": "C1", "text": "hi", "metadata": json.dumps(metadata("k", 7))}
        request = urllib.request.Request(
            f"{fake.base_url}chat.postMessage", data=urllib.parse.urlencode(form).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        with urllib.request.urlopen(request, timeout=5) as response:
            ts = json.loads(response.read())["ts"]
        stored = fake.message("C1", ts)

    assert stored is not None and stored["metadata"] == metadata("k", 7)


# --- console & factory -------------------------------------------------------------------------


def test_console_prints_one_line_per_event() -> None:
    out = io.StringIO()
    console = ConsoleThreadNotifier(stream=out)
    refs = run(deliver_all(console, [STORY["open"], STORY["evidence-note"]]))
    console.learn_channel("C1")  # nothing to learn
    refs.append(run(console.deliver(*STORY["take"], refs[-1], check_posted=True)))  # nothing to check

    case_id = STORY["open"][0]["case_id"]
    assert refs == [ThreadRef("console", case_id)] * 3
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"[case {case_id}] M-100 batch B-7, brakes: open by recallwatch (new -> open)")
    assert lines[1].endswith("evidence by ana (open -> open): because")


def test_make_thread_notifier_picks_slack_only_with_a_token() -> None:
    slack = make_thread_notifier("xoxb-1", "#c", "http://127.0.0.1:1/api/", "http://rw")
    assert isinstance(slack, SlackThreadNotifier)
    assert slack.client.base_url == "http://127.0.0.1:1/api/"
    assert slack.case_url("case-1") == "http://rw/v1/cases/case-1"
    assert isinstance(make_thread_notifier(None, "#c", None, "http://rw"), ConsoleThreadNotifier)
    assert isinstance(make_thread_notifier("", "#c", None, "http://rw"), ConsoleThreadNotifier)


# --- whose messages count, and when a lookup is made --------------------------------------------


def other_case() -> Step:
    return Story().alert(alert("b1", model="M-200"))


def is_lookup(method: str, _body: dict[str, Any]) -> bool:
    return method.startswith("conversations.")


def test_another_installations_thread_is_neither_adopted_nor_hides_our_reply() -> None:
    # Staging and prod post the same case (same signal, same seqs) to one channel.
    with SlackFake(token=TOKEN) as fake:
        staging = SlackThreadNotifier(
            TOKEN, "C1", base_url=fake.base_url, api_base_url="http://staging.example", sleep=RecordingSleep()
        )
        theirs = run(deliver_all(staging, [STORY["open"], STORY["evidence-alert"]]))[0]
        prod = notifier(fake, RecordingSleep())
        ours = run(prod.deliver(*STORY["open"], None))
        run(staging.deliver(*STORY["evidence-alert"], ours))  # their reply #2, in our thread even
        run(notifier(fake, RecordingSleep()).deliver(*STORY["evidence-alert"], ours, check_posted=True))
        replies = fake.replies("C1", ours.ts)
        root = fake.message("C1", ours.ts)

    assert ours.ts != theirs.ts  # their root was not adopted
    assert root is not None and root["metadata"] == metadata(STORY["open"][0]["case_id"], 1)
    sources = [r["metadata"]["event_payload"]["source"] for r in replies]
    assert sources == ["http://staging.example", SOURCE]  # their reply did not pass for ours


def test_a_restart_in_a_thread_with_replies_posts_the_next_events_reply() -> None:
    steps = [STORY[label] for label in ("open", "evidence-alert", "evidence-note")]
    assessed = STORY["assess"]
    with SlackFake(token=TOKEN) as fake:
        ref = run(deliver_all(notifier(fake, RecordingSleep()), steps))[0]
        run(notifier(fake, RecordingSleep()).deliver(*assessed, ref, check_posted=True))
        replies = fake.replies("C1", ref.ts)

    # Replies for other seqs of the case are there: only the event's own seq counts as posted.
    assert [r["metadata"]["event_payload"]["seq"] for r in replies] == [2, 3, 4]
    assert assessed[1]["seq"] == 4 and replies[-1]["text"] == thread_reply(*assessed)


@pytest.mark.parametrize(("posted_before_opening_s", "adopted"), [(1800, True), (7200, False)])
def test_history_is_read_from_an_hour_before_the_case_opened(
    posted_before_opening_s: int, adopted: bool
) -> None:
    case, _event = STORY["open"]
    assert case["opened_at"] == T0
    with SlackFake(token=TOKEN) as fake:
        fake.ts_base = int(T0) - posted_before_opening_s  # Slack's clock and ours disagree
        first = run(notifier(fake, RecordingSleep()).deliver(*STORY["open"], None))
        again = run(notifier(fake, RecordingSleep()).deliver(*STORY["open"], None))

    assert (again == first) is adopted


def test_an_adopted_root_turns_on_the_reply_check() -> None:
    with SlackFake(token=TOKEN) as fake:
        # Root and first reply posted, then a crash before either position was saved.
        ref = run(deliver_all(notifier(fake, RecordingSleep()), [STORY["open"], STORY["evidence-alert"]]))[0]
        # The replay of the reply's event knows no thread; the caller did not ask for a check.
        again = run(notifier(fake, RecordingSleep()).deliver(*STORY["evidence-alert"], None))
        replies = fake.replies("C1", ref.ts)

    assert again == ref
    assert len(replies) == 1


# --- a channel configured by name ----------------------------------------------------------------


def by_name(fake: SlackFake, **kwargs: Any) -> SlackThreadNotifier:
    return SlackThreadNotifier(
        TOKEN,
        "#quality",
        base_url=fake.base_url,
        api_base_url="http://rw.example",
        sleep=RecordingSleep(),
        **kwargs,
    )


def test_the_fake_answers_a_post_to_a_name_with_the_channels_id() -> None:
    with SlackFake(token=TOKEN) as fake:
        ref = run(by_name(fake).deliver(*STORY["open"], None))
        stored = fake.message(channel_id("#quality"), ref.ts)

    assert ref.channel == channel_id("#quality") and ref.channel.startswith("C")
    assert stored is not None


def test_a_channel_configured_by_name_learns_its_id_from_a_known_thread() -> None:
    other = other_case()
    with SlackFake(token=TOKEN) as fake:
        first = by_name(fake)
        known = run(first.deliver(*STORY["open"], None))
        lost = run(first.deliver(*other, None))  # posted, then a crash before its position was saved
        restarted = by_name(fake)
        run(restarted.deliver(*STORY["evidence-alert"], known))  # its thread tells the channel id
        again = run(restarted.deliver(*other, None))

    assert again == lost
    assert len(roots_in(fake, "#quality")) == 2  # not 3


def test_a_learned_channel_id_is_only_a_guess_until_a_root_post_answers() -> None:
    cases = [STORY["open"], other_case()]
    with SlackFake(token=TOKEN) as fake:
        slack = by_name(fake)
        for not_an_id in ("none", "console", "", "#quality"):
            slack.learn_channel(not_an_id)
        slack.learn_channel("CSTALE")  # the channel configured before
        for case, event in cases:
            run(slack.deliver(case, event, None))
        looked_in = [c.body["channel"] for c in fake.calls if c.method == "conversations.history"]

    assert looked_in == ["CSTALE", channel_id("#quality")]  # the first root's answer corrected it


# --- lookups never hold delivery up -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("refusal", ["ratelimited", "missing_scope"])
def test_a_rate_limited_or_refused_lookup_pauses_lookups_for_ten_minutes(
    refusal: str, caplog: pytest.LogCaptureFixture
) -> None:
    cases = [Story().alert(alert(f"x{n}", model=f"M-{n}")) for n in range(4)]
    clock, sleep = Clock(), RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        if refusal == "ratelimited":
            fake.rate_limit_next(1, retry_after=60, when=is_lookup)  # history: 1 call a minute
        else:
            fake.error_next(1, "missing_scope", when=is_lookup)  # then the scope was granted
        slack = notifier(fake, sleep, monotonic=clock)
        lookups = []
        with caplog.at_level(logging.WARNING, logger="sinks.slack_threads"):
            for case, advance in zip(cases, (0.0, 599.0, 2.0, 0.0), strict=True):
                clock.now += advance
                run(slack.deliver(*case, None))
                lookups.append(sum(is_lookup(c.method, c.body) for c in fake.calls))

    assert len(roots_in(fake)) == 4  # every case posted
    assert lookups == [1, 1, 2, 3]  # refused; paused (599 s later); 601 s later: lookups again
    assert sleep.delays == []  # no Retry-After waited for
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and refusal in warnings[0], warnings


def test_a_failing_lookup_is_tried_three_times_then_the_root_is_posted() -> None:
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        fake.fail_next(3, status=503, when=is_lookup)
        slack = notifier(fake, sleep)
        run(slack.deliver(*STORY["open"], None))
        run(slack.deliver(*other_case(), None))
        methods = [(c.method, c.status) for c in fake.calls]

    assert methods == [
        *[("conversations.history", 503)] * 3,
        ("chat.postMessage", 200),
        ("conversations.history", 200),  # a passing failure pauses nothing
        ("chat.postMessage", 200),
    ]
    assert sleep.delays == [0.5, 1.0]


# --- a post that failed after Slack stored it ---------------------------------------------------


def test_a_root_post_that_failed_after_slack_stored_it_is_not_posted_again() -> None:
    with SlackFake(token=TOKEN) as fake:
        fake.fail_next(1, status=500, when=is_root_post, after_storing=True)
        ref = run(notifier(fake, RecordingSleep()).deliver(*STORY["open"], None))
        methods = [(c.method, c.status) for c in fake.calls]

    assert methods == [
        ("conversations.history", 200),
        ("chat.postMessage", 500),
        ("conversations.history", 200),  # found: the 500 came after the post was stored
    ]
    assert [c.response.get("ts") for c in fake.calls if c.method == "chat.postMessage"] == [None]
    assert ref.channel == "C1" and fake.message("C1", ref.ts) is not None


def test_a_reply_that_failed_after_slack_stored_it_is_not_posted_again() -> None:
    is_reply = lambda method, body: method == "chat.postMessage" and "thread_ts" in body  # noqa: E731
    with SlackFake(token=TOKEN) as fake:
        slack = notifier(fake, RecordingSleep())
        ref = run(slack.deliver(*STORY["open"], None))
        fake.error_next(1, "internal_error", when=is_reply, after_storing=True)
        run(slack.deliver(*STORY["evidence-alert"], ref))
        replies = fake.replies("C1", ref.ts)

    assert len(replies) == 1
