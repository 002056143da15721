"""Tell people when a fix run needs them: its gate failed, or its candidate waits for an approval.

Every such moment is a Prefect event (``mend.gate.failed``, ``mend.candidate.awaiting-approval``) whose
payload holds the notice's subject and body, so a Prefect automation on the server sends it through a
notification block (``ensure_automations``, ``mend notify-setup``): the way for deployments, whose server
outlives the run. A run on an ephemeral Prefect API (``make run``) ends with its server, before any
automation could act, so ``MEND_NOTIFY_BLOCK`` (``<block-type-slug>/<name>``, e.g.
``custom-webhook/mend-approvals``) makes the run call the block's ``notify`` itself. Use one of the two.

A notification that cannot be delivered is logged and dropped: the run's outcome is already recorded in
the ledger and the registry, and a webhook outage must not turn a finished run into a failed one.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from tasks.settings import FixSettings

LOGGER = logging.getLogger(__name__)

GATE_FAILED_EVENT = "mend.gate.failed"
AWAITING_APPROVAL_EVENT = "mend.candidate.awaiting-approval"


def _failures(review: dict[str, Any]) -> list[str]:
    return [
        f"{item['name']}: observed {item.get('observed')}, threshold {item.get('threshold')}"
        for item in review["gate"].get("expectations", [])
        if not item["passed"]
    ]


def gate_failed_message(review: dict[str, Any]) -> tuple[str, str]:
    """(subject, body) of the failed-gate notice."""
    subject = f"mend: gate FAILED for fix run {review['run_id'][:8]} of {review['model']}"
    body = "\n".join([
        f"{review['summary']['edits']} edit(s) on champion version {review.get('champion_version')}; "
        "nothing was registered and the flags are marked failed_gate.",
        *(f"- {line}" for line in _failures(review)),
        f"Review: MLflow run {review.get('mlflow_run_id')}, artifact review/review.html",
    ])  # fmt: skip
    return subject, body


def awaiting_approval_message(review: dict[str, Any], version: str, page: str) -> tuple[str, str]:
    """(subject, body) of the notice that a candidate waits for a person's approval."""
    subject = f"mend: {review['model']} version {version} awaits approval"
    body = (
        f"Gate passed for {review['summary']['edits']} edit(s). Review it and approve: {page}\n"
        f"then: mend promote --version {version} (or --approve --approver NAME in one step)"
    )
    return subject, body


def save_webhook(name: str, url: str) -> str:
    """Save a webhook notification block that posts ``{"subject", "text"}`` JSON; returns its reference."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name=name, url=url, json_data={"subject": "{{subject}}", "text": "{{body}}"}
    )
    block.save(name, overwrite=True)
    return f"custom-webhook/{name}"


def ensure_automations(block: str) -> list[str]:
    """Prefect automations that send ``block``'s notification on each of this module's events, with the
    subject and body the run put in the event; made again when they exist (the block may have changed)."""
    from prefect.automations import Automation
    from prefect.blocks.core import Block
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    block_id = Block.load(block)._block_document_id
    names = []
    for event in (GATE_FAILED_EVENT, AWAITING_APPROVAL_EVENT):
        name = f"mend: {event}"
        with contextlib.suppress(ValueError):  # raised when there is none yet
            Automation.read(name=name).delete()
        Automation(
            name=name,
            trigger=EventTrigger(expect={event}, posture=Posture.Reactive, threshold=1),
            actions=[SendNotification(block_document_id=block_id, subject="{{ event.payload.subject }}",
                                      body="{{ event.payload.body }}")],
        ).create()  # fmt: skip
        names.append(name)
    return names


def _emit(event: str, review: dict[str, Any], payload: dict[str, Any]) -> None:
    from prefect.events import emit_event

    try:
        emit_event(
            event=event,
            resource={"prefect.resource.id": f"mend.model.{review['model']}",
                      "prefect.resource.name": review["model"]},
            payload={"run_id": review["run_id"], "mlflow_run_id": review.get("mlflow_run_id"), **payload},
        )  # fmt: skip
    except Exception as error:  # events only feed automations; the outcome is recorded elsewhere
        LOGGER.warning("event %s could not be emitted: %s", event, error)


def send(settings: FixSettings, subject: str, body: str) -> bool:
    """Send through the configured notification block; True when one was configured and accepted it."""
    if not settings.notify_block:
        return False
    from prefect.blocks.core import Block

    try:
        Block.load(settings.notify_block).notify(body, subject=subject)
    except Exception as error:
        LOGGER.warning("notification through block %s failed: %s", settings.notify_block, error)
        return False
    LOGGER.info("notified through %s: %s", settings.notify_block, subject)
    return True


def announce_gate_failed(settings: FixSettings, review: dict[str, Any]) -> bool:
    subject, body = gate_failed_message(review)
    _emit(GATE_FAILED_EVENT, review, {"failures": _failures(review), "subject": subject, "body": body})
    return send(settings, subject, body)


def announce_awaiting_approval(settings: FixSettings, review: dict[str, Any], version: str) -> bool:
    from tasks.review import version_page

    page = version_page(settings, version)
    subject, body = awaiting_approval_message(review, version, page)
    _emit(
        AWAITING_APPROVAL_EVENT,
        review,
        {"version": version, "version_page": page, "subject": subject, "body": body},
    )
    return send(settings, subject, body)
