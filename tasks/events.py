"""Flag a prediction: append it to the flag log, then announce it as a Prefect event.

Deployments trigger a fix run on ``mend.prediction.flagged`` once enough flags arrive within a window
(``infra/prefect/prefect.yaml``). The flag is written first: an event that cannot be delivered
loses nothing, since the nightly run reads the log, not the events.
"""

from __future__ import annotations

import logging

from tasks.flags import Flag, append_flags
from tasks.settings import FixSettings

LOGGER = logging.getLogger(__name__)
FLAGGED_EVENT = "mend.prediction.flagged"


def emit_flagged(flag: Flag, store_url: str):
    """The Prefect event for ``flag``; returns it, or None when no Prefect API is reachable."""
    from prefect.events import emit_event

    try:
        return emit_event(
            event=FLAGGED_EVENT,
            resource={
                "prefect.resource.id": f"mend.flag.{flag.flag_id}",
                "prefect.resource.name": flag.prompt[:80],
            },
            related=[
                {"prefect.resource.id": f"mend.model.{flag.model_name}", "prefect.resource.role": "model"}
            ],
            payload={
                "flag_id": flag.flag_id,
                "model_name": flag.model_name,
                "model_version": flag.model_version,
                "reporter": flag.reporter,
                "flag_log": store_url,
            },
        )
    except Exception as error:  # the flag is already stored; the event only speeds up the next run
        LOGGER.warning("flag %s stored, but the event could not be emitted: %s", flag.flag_id, error)
        return None


def flag_prediction(
    settings: FixSettings,
    *,
    prompt: str,
    correction: str,
    prediction: str,
    paraphrases: tuple[str, ...] = (),
    subject: str | None = None,
    reason: str,
    reporter: str,
    model_version: str | None = None,
) -> Flag:
    """Store a new flag for the registered model (default version: the current champion) and emit its event."""
    if model_version is None:
        from tasks.registry import champion_version

        model_version = champion_version(settings.registered_model, tracking_uri=settings.tracking_uri) or "1"
    flag = Flag.create(
        model_name=settings.registered_model, model_version=str(model_version), prompt=prompt,
        prediction=prediction, correction=correction, paraphrases=paraphrases, subject=subject,
        reason=reason, reporter=reporter,
    )  # fmt: skip
    store = settings.open_store()
    key = append_flags(store, [flag])
    emit_flagged(flag, store.url(key))
    return flag
