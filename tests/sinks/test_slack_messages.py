"""What a case's Slack thread says: root message, thread replies and escaping, without Slack.

Case and event dicts come from the real case core (tests/sinks/case_story.py), so the messages are
tested on exactly what the worker will hand the notifier.
"""

from __future__ import annotations

from typing import Any

import pytest

from cases.identity import CaseBook, SignalIdentity
from cases.risk import DEFAULT_MATRIX
from cases.view import view_of, view_to_dict
from sinks.slack_messages import root_message, thread_reply
from tests.sinks.case_story import CELL, STORY, T0, Step, Story, alert

# --- root message ------------------------------------------------------------------------------


def fields_of(blocks: list[dict[str, Any]]) -> dict[str, str]:
    sections = [b for b in blocks if b["type"] == "section"]
    assert all(len(s["fields"]) <= 10 for s in sections)  # Slack refuses more in one section
    return dict(f["text"].lstrip("*").split("*\n", 1) for s in sections for f in s["fields"])


def test_root_message_shows_the_case_and_its_buttons() -> None:
    case, _ = STORY["score"]
    text, blocks = root_message(case, "http://rw/v1/cases/x")

    assert blocks[0]["text"] == {"type": "plain_text", "text": "M-100 batch B-7, brakes"}
    assert fields_of(blocks) == {
        # What issue 2 asks the alert to show beside the case: rate against expected, units at risk.
        "Rate vs expected": "1.17 vs 0.25 expected per 1,000 units",
        "Units at risk": "12,000",
        "State": "assessing",
        "Risk": "combined 2.25; recommend monitor",
        "Owner": "ana",
        "Assignees": "ana (quality), bo (engineering), cy (legal)",
        "Acknowledged by": "bo",
        "Alerts": "2 (0 muted)",
        "Recall likelihood": "not ranked",
        "Latest evidence": "alert a2: 14 vs 3.0 expected, detector cusum, config v3",
        "Opened": "2024-01-02T03:04:05Z",
        "Updated": "2024-01-02T03:15:05Z",
    }
    [actions] = [b["elements"] for b in blocks if b["type"] == "actions"]
    assert [(b["action_id"], b["text"]["text"], b["value"]) for b in actions] == [
        ("case_acknowledge", "Acknowledge", case["case_id"]),
        ("case_take", "Take case", case["case_id"]),
        ("case_open", "Open in RecallWatch", case["case_id"]),
    ]
    assert actions[2]["url"] == "http://rw/v1/cases/x"
    assert "url" not in actions[0] and "url" not in actions[1]
    assert blocks[-1]["elements"][0]["text"] == f"case `{case['case_id']}`"
    assert (
        text == "Recall case M-100 batch B-7, brakes: assessing. Rate vs expected: 1.17 vs 0.25 expected per"
        " 1,000 units. Units at risk: 12,000. <http://rw/v1/cases/x|Open in RecallWatch>"
    )


def test_root_message_of_a_fresh_and_of_a_decided_case() -> None:
    opened = fields_of(root_message(STORY["open"][0], "u")[1])
    assert (opened["State"], opened["Owner"], opened["Assignees"]) == ("open", "nobody yet", "none")
    assert opened["Risk"] == "missing: severity, scope, legal, brand"

    muted = fields_of(root_message(STORY["mute"][0], "u")[1])
    assert muted["State"] == "campaign (recall)"
    assert muted["Alerts"] == "3 (1 muted)"
    assert muted["Risk"].startswith("recommend recall; a reviewer scored severity 5")
    assert muted["Risk"].endswith("missing: scope, legal, brand")


def test_root_message_of_an_alert_without_fleet_size_says_so() -> None:
    # The peer scan alarms on complaint counts alone: no units in the field, so no rate to show.
    book = CaseBook()
    peer = alert("p1", count=9, units_in_field=0, rate_per_1000=0.0, expected_rate_per_1000=0.0, expected=2.5)
    case_id = book.on_alert(peer, at=T0).case_id
    case = book.case(case_id)
    assert case is not None
    facts = fields_of(
        root_message(view_to_dict(view_of(case, book.identity_of(case_id), DEFAULT_MATRIX)), "u")[1]
    )
    assert facts["Rate vs expected"] == "9 incidents vs 2.5 expected"
    assert facts["Units at risk"] == "unknown (no fleet size)"


def test_root_message_of_a_case_with_no_alert_evidence() -> None:
    book = CaseBook()
    event = book.silence(SignalIdentity.cell(*CELL), until=T0 + 60, actor="ana", at=T0, reason="planned test")
    case = view_to_dict(view_of(book.case(event.case_id), book.identity_of(event.case_id), DEFAULT_MATRIX))  # type: ignore[arg-type]

    facts = fields_of(root_message(case, "u")[1])
    assert (facts["State"], facts["Latest evidence"], facts["Opened"]) == ("new", "no alerts yet", "—")


def test_header_is_truncated_to_slacks_limit() -> None:
    case = dict(STORY["open"][0], title="M" * 300)
    assert len(root_message(case, "u")[1][0]["text"]["text"]) == 150


# --- thread replies ----------------------------------------------------------------------------

REPLIES = [
    ("evidence-alert", "New alert `a2`: 14 vs 3.0 expected, detector cusum, config v3"),
    ("evidence-note", "Evidence from *ana* (2 complaints): returned unit smelled burnt"),
    ("assess", "Assessment started by *ana* (open → assessing): triage"),
    ("take", "*ana* took the case (as quality)"),
    ("assign", "*bo* assigned as engineering by *ana*"),
    ("acknowledge", "*bo* acknowledged the case"),
    ("score", "*cy* scored legal=2 (as legal). Risk now: combined 2.25; recommend monitor"),
    ("add_task", "*ana* added task “lab test” for bo (engineering), due 2024-01-02T04:04:05Z"),
    ("escalate", "Task “lab test” escalated to *engineering_manager*: task task-"),
    ("complete_task", "*bo* completed task “lab test”"),
    ("decide", "Decided *monitor* (recommended monitor) by *ana*: 3x baseline, no injuries"),
    ("reassess", "Reassessment started by *ana* (decided → assessing): new complaints"),
    ("decide-unscored", "Decided *dismiss* (no recommendation yet) by *ana*: false alarm"),
    ("close", "Closed by *ana* (decided → closed): done"),
    ("reopen", "Reopened by *recallwatch* (closed → open): alert a3: signal cell/M-100/B-7/brakes is back"),
    ("decide-override", "Decided *recall* (recommended recall) by *ana*: fire risk"),
    ("launch_campaign", "Recall campaign launched by *ana* (scope: 1 signals): go"),
    ("mute", "Muted: alert a4 muted: covered by the recall campaign of case case-"),
    ("silence", "*ana* silenced alerts until 2024-02-01T03:04:05Z: known issue"),
    ("lift-silence", "*ana* lifted the silence: over"),
]


@pytest.mark.parametrize(("label", "expected"), REPLIES, ids=[label for label, _ in REPLIES])
def test_thread_reply_per_action(label: str, expected: str) -> None:
    case, event = STORY[label]
    reply = thread_reply(case, event)
    assert reply is not None
    assert reply.startswith(expected)
    assert "\n" not in reply


def test_every_action_of_the_story_is_covered_by_the_table() -> None:
    actions = {STORY[label][1]["action"] for label, _ in REPLIES}
    assert actions | {"open"} == {e["action"] for _, e in STORY.values()} | {"open"}
    assert len(actions) == 15  # every action but open


def test_open_gets_no_reply_and_unknown_actions_a_generic_one() -> None:
    case, event = STORY["open"]
    assert thread_reply(case, event) is None
    odd = dict(event, action="teleport", actor="ana", reason="<b>")
    assert thread_reply(case, odd) == "teleport by *ana* (new → open): &lt;b&gt;"


def test_long_reasons_are_cut_to_one_short_line() -> None:
    case, event = STORY["close"]
    reply = thread_reply(case, dict(event, reason="x" * 1000))
    assert reply is not None and len(reply) < 400 and reply.endswith("…")


@pytest.mark.parametrize("far", [1e18, 1e300])
def test_a_time_beyond_the_calendar_is_shown_as_its_number_not_a_failed_post(far: float) -> None:
    # The case core takes any finite epoch for a due date or a silence's end; a reply that raised
    # on one was recorded as a failed delivery, and that event never reached the thread.
    case, event = STORY["add_task"]
    task = {**event["data"]["task"], "due": far}
    reply = thread_reply(case, {**event, "data": {**event["data"], "task": task}})
    assert reply is not None and reply.endswith(f"due {far:.1f}")
    case, event = STORY["silence"]
    reply = thread_reply(case, {**event, "data": {**event["data"], "until": far}})
    assert reply is not None and f"until {far:.1f}" in reply


# --- escaping ----------------------------------------------------------------------------------

HOSTILE = "<!channel> <http://evil|click> & co"


def hostile_story() -> dict[str, Step]:
    s = Story()
    steps = {"open": s.alert(alert("<!here>", model="<!channel>", detector=HOSTILE))}
    steps["note"] = s.cmd("evidence", "<@U1>", HOSTILE, note=HOSTILE)
    steps["assess"] = s.cmd("assess", "<!everyone>", HOSTILE)
    steps["assign"] = s.cmd("assign", "ana", person=HOSTILE, role="quality")
    steps["task"] = s.cmd("add_task", "ana", title=HOSTILE, owner=HOSTILE, role="quality", due=T0)
    steps["complete"] = s.cmd("complete_task", "ana", task_id=steps["task"][1]["data"]["task"]["task_id"])
    return steps


def test_hostile_text_is_escaped_everywhere_but_the_plain_text_header() -> None:
    steps = hostile_story()
    replies = [thread_reply(c, e) for label, (c, e) in steps.items() if label != "open"]
    case = steps["complete"][0]
    text, blocks = root_message(case, "http://rw/v1/cases/x")
    mrkdwn = [*replies, *fields_of(blocks).values(), blocks[-1]["elements"][0]["text"]]

    for line in mrkdwn:
        assert line is not None
        assert "<" not in line and ">" not in line, line
    assert "&lt;!channel&gt; &lt;http://evil|click&gt; &amp; co" in replies[0]  # type: ignore[operator]
    assert "*&lt;@U1&gt;*" in replies[0]  # type: ignore[operator]
    assert "&lt;!channel&gt;" in fields_of(blocks)["Assignees"]
    assert text.count("<") == 1  # only our own link
    assert blocks[0]["text"]["text"] == "<!channel> batch B-7, brakes"  # plain_text: shown as is
