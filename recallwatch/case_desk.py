"""The case desk: the one writer of a case's log, gluing the pure case core to ClickHouse.

Why one writer: a case event's seq is "the next number", which only one process may hand out.
Alerts and commands for a case are keyed by its id on the alerts topic, so exactly one worker
handles a case at a time and runs it through this desk; the API reads the log and sends commands.
Everything is idempotent: an alert already on the case and a command already carried out change
nothing, so a worker killed before acking replays its input harmlessly.

Before each input the desk folds in events other workers wrote (a rebalance can move a case, and a
campaign on one case mutes alerts of another), looking back a margin to absorb clock skew.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cases.commands import Command, CommandRefused, InvalidCommand, UnknownCase, execute, overdue_commands
from cases.identity import CaseBook, related_recalls
from cases.lifecycle import CaseEvent, ConflictingEvent, InvalidTransition
from cases.risk import RiskMatrix
from cases.view import CaseView, view_of, view_to_dict
from sinks.case_store import CaseStore, CommandResult, seqs_of

log = logging.getLogger("recallwatch.cases")
REFRESH_MARGIN_S = 120.0


class UnusableInput(ValueError):
    """The pure case core raised on an alert: the input's fault, so retrying can never help.

    Raised only for what the core does with the input, never for the store's reads and writes
    around it, so a caller that retries store failures can tell the two apart.
    """


class CaseDesk:
    def __init__(self, store: CaseStore, matrix: RiskMatrix, clock: Callable[[], float]) -> None:
        self.store = store
        self.matrix = matrix
        self.clock = clock
        self.book: CaseBook | None = None
        self._watermark = 0.0
        self._lock = threading.Lock()  # the API's direct mode and tests call from several threads

    def refresh(self) -> CaseBook:
        """The book with every stored event folded in (the whole log the first time)."""
        now = self.clock()
        if self.book is None:
            self.book = CaseBook(self.store.events())
        else:
            for event in self.store.events(since=self._watermark - REFRESH_MARGIN_S):
                try:
                    self.book.apply(event)
                except (ConflictingEvent, InvalidTransition, ValueError) as exc:
                    # Two writers gave one seq different events (only possible across a rebalance):
                    # the stored copy is what readers see; say so loudly rather than stop.
                    log.error("case log conflict on %s #%d: %s", event.case_id, event.seq, exc)
        self._watermark = now
        return self.book

    def on_alert(self, alert: Mapping[str, Any], at: float) -> list[CaseEvent]:
        """Record what an alert does to its case (open, evidence, re-open, mute).

        An alert already on the case returns the event that recorded it, unchanged: a worker killed
        after storing it but before passing it on sends it again, and the thread skips it if posted.
        """
        with self._lock:
            book = self.refresh()
            try:
                outcome = book.on_alert(alert, at)
            except Exception as exc:
                self.book = None  # it may have applied part of the event: rebuilt, it holds only the log
                raise UnusableInput(f"the case desk cannot take this alert: {exc!r:.500}") from exc
            if outcome.event is None:
                case = book.case(outcome.case_id)
                alert_id = str(alert.get("alert_id") or "")
                return [e for e in (case.history if case else ()) if _alert_id(e) == alert_id][:1]
            self._store_or_forget([outcome.event])
            return [outcome.event]

    def unheld(self, alerts: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The alerts no case holds yet (none recorded them as opening, evidence or muted)."""
        with self._lock:
            book = self.refresh()
            return [alert for alert in alerts if not book.holds_alert(alert)]

    def recalls_on(self, model: str, failure_mode: str, batch: str) -> int:
        """Cases decided as recalls on the same model and failure mode in the model's other batches:
        the live form of the backtest's ``related_recalls`` (a component recalled before)."""
        with self._lock:
            book = self.refresh()
            return related_recalls(book, model, failure_mode, batch)

    def run(self, cmd: Command) -> tuple[CommandResult, list[CaseEvent]]:
        """Carry out a command; a refused or invalid one is recorded with the reason and changes nothing."""
        with self._lock:
            book = self.refresh()
            try:
                events = execute(book, self.matrix, cmd)
            except UnknownCase as exc:
                return self._result(cmd, "unknown_case", str(exc), []), []
            except InvalidCommand as exc:
                return self._result(cmd, "invalid", str(exc), []), []
            except (CommandRefused, InvalidTransition, ValueError) as exc:
                return self._result(cmd, "refused", str(exc), []), []
            except Exception as exc:
                # Only the pure core ran, so this is the command's fault (or a core bug it trips):
                # raised, it would be retried for ever; answered, the sender learns and the case moves on.
                self.book = None  # it may have applied part of an event: rebuilt, it holds only the log
                log.exception("case command %s (%s) broke the case core", cmd.command_id, cmd.kind)
                detail = f"the case desk cannot carry out this command: {exc!r:.500}"
                return self._result(cmd, "invalid", detail, []), []
            self._store_or_forget(events)
            return self._result(cmd, "ok", "", events), events

    def _store_or_forget(self, events: list[CaseEvent]) -> None:
        """Store events the book already holds; if that fails, forget the book.

        The book applies an event before it is stored. Kept after a failed write, it would take the
        retried alert for a duplicate and hand back an event that is in no log, and the case's next
        event would be stored without the one before it. Rebuilt from the store, it decides again.
        """
        try:
            self.store.append(events, recorded_at=self.clock())
        except BaseException:
            self.book = None
            raise

    def _result(self, cmd: Command, status: str, detail: str, events: list[CaseEvent]) -> CommandResult:
        result = CommandResult(cmd.command_id, cmd.case_id, status, detail, seqs_of(events))
        self.store.record_result(result, recorded_at=self.clock())
        return result

    def due_escalations(self, now: float, escalate_after_s: float) -> list[Command]:
        """Commands escalating overdue tasks; their ids are fixed per task, so sending twice is harmless."""
        with self._lock:
            return overdue_commands(self.refresh(), self.matrix, now, escalate_after_s)

    def view(self, case_id: str) -> CaseView | None:
        with self._lock:
            book = self.refresh()
            case = book.case(case_id)
            return None if case is None else view_of(case, book.identity_of(case_id), self.matrix)

    def case_dict(self, case_id: str) -> dict[str, Any] | None:
        view = self.view(case_id)
        return None if view is None else view_to_dict(view)


def _alert_id(event: CaseEvent) -> str:
    alert = event.data.get("alert")
    return str(alert.get("alert_id") or "") if isinstance(alert, Mapping) else ""
