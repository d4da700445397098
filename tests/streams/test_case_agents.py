"""Which Slack thread a case's next event goes to, after deliveries that worked and that failed."""

from __future__ import annotations

from sinks.case_store import ThreadPosition
from sinks.slack_threads import ThreadRef
from streams.case_agents import reply_target


def test_a_case_without_a_position_gets_a_root_and_one_with_a_thread_replies_in_it() -> None:
    assert reply_target(None) is None
    assert reply_target(ThreadPosition("case-1", "C1", "1700000000.000100", 3)) == ThreadRef(
        "C1", "1700000000.000100"
    )


def test_after_a_refused_root_the_next_event_tries_a_root_again() -> None:
    # What the agent saves when Slack refused the root post for good (e.g. not_in_channel).
    refused = ThreadPosition("case-1", "none", "", 1)
    assert reply_target(refused) is None
