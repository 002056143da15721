"""Approval, promotion and rollback: the rules that move the ``champion`` alias of the edited-model registry.

``champion`` (what production serves) moves only to a version whose evaluation gate passed and that a
person approved; each promotion records the previous champion on the new version, so ``rollback`` can
walk back. Approvals and promotion records are MLflow tags, visible and editable in the MLflow UI.
Registration and lookup are in ``tasks.registry``; the Prefect task adapters, which also keep the flag
ledger in step, are in ``tasks.promotion``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from editing.core.snapshot import utc_now
from tasks.registry import (
    CANDIDATE,
    CHAMPION,
    DEFAULT_MODEL_NAME,
    RegistryError,
    Tag,
    alias_version,
    registry_client,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

LOGGER = logging.getLogger(__name__)


class PromotionRefused(RegistryError):
    """Promotion (or approval) was refused: the gate did not pass or nobody approved."""


@dataclass(frozen=True)
class PromotionRecord:
    model_name: str
    version: str
    previous_champion: str | None
    promoted_by: str
    promoted_at: str


def _gate_passed(version: ModelVersion) -> bool:
    return version.tags.get(Tag.GATE_PASSED, "").lower() == "true"


def approve(model_name: str, version: str | int, approver: str, *, tracking_uri: str | None = None) -> None:
    """Record that ``approver`` approved promoting ``version`` (tags ``approved_by``/``approved_at``)."""
    if not approver or not approver.strip():
        raise ValueError("approve: approver must be a non-empty name")
    client = registry_client(tracking_uri)
    model_version = client.get_model_version(model_name, str(version))
    if not _gate_passed(model_version):
        raise PromotionRefused(
            f"{model_name} version {version}: cannot approve, its evaluation gate did not pass"
        )
    client.set_model_version_tag(model_name, str(version), Tag.APPROVED_BY, approver.strip())
    client.set_model_version_tag(model_name, str(version), Tag.APPROVED_AT, utc_now())
    LOGGER.info("%s version %s approved by %s", model_name, version, approver)


def promote(
    model_name: str, version: str | int, *, approver: str | None = None, tracking_uri: str | None = None
) -> PromotionRecord:
    """Move ``champion`` to ``version`` if its gate passed and it is approved; else ``PromotionRefused``.

    ``approver`` is who performs the promotion (recorded as ``promoted_by``; defaults to the approver);
    it does not replace the approval itself.
    """
    client = registry_client(tracking_uri)
    version = str(version)
    model_version = client.get_model_version(model_name, version)
    tags = model_version.tags
    if not _gate_passed(model_version):
        raise PromotionRefused(
            f"{model_name} version {version}: evaluation gate did not pass "
            f"({Tag.GATE_PASSED}={tags.get(Tag.GATE_PASSED)!r}); it cannot become champion"
        )
    if not tags.get(Tag.APPROVED_BY):
        raise PromotionRefused(
            f"{model_name} version {version}: not approved; a person must approve it first "
            f"(`approve(...)` or tag {Tag.APPROVED_BY!r} in the MLflow UI)"
        )
    current = alias_version(client, model_name, CHAMPION)
    if current == version:  # promoting twice is a no-op, keeping the original record
        return _promotion_record(model_name, version, tags)
    promoted_by = approver or tags[Tag.APPROVED_BY]
    record_tags = {Tag.PROMOTED_BY: promoted_by, Tag.PROMOTED_AT: utc_now()}
    if current is not None:
        record_tags[Tag.PREVIOUS_CHAMPION] = current
    # Tags first: if the process dies before the alias moves, nothing has been promoted.
    for key, value in record_tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, CHAMPION, version)
    if alias_version(client, model_name, CANDIDATE) == version:
        client.delete_registered_model_alias(model_name, CANDIDATE)
    LOGGER.info("%s: champion %s -> %s (by %s)", model_name, current, version, promoted_by)
    return PromotionRecord(model_name, version, current, promoted_by, record_tags[Tag.PROMOTED_AT])


def _promotion_record(model_name: str, version: str, tags: Mapping[str, str]) -> PromotionRecord:
    return PromotionRecord(
        model_name,
        version,
        tags.get(Tag.PREVIOUS_CHAMPION),
        tags.get(Tag.PROMOTED_BY, tags.get(Tag.APPROVED_BY, "")),
        tags.get(Tag.PROMOTED_AT, ""),
    )


def rollback(model_name: str = DEFAULT_MODEL_NAME, *, tracking_uri: str | None = None) -> str:
    """Move ``champion`` back to the version it replaced; returns that version."""
    client = registry_client(tracking_uri)
    current = alias_version(client, model_name, CHAMPION)
    if current is None:
        raise RegistryError(f"{model_name}: no champion to roll back")
    previous = client.get_model_version(model_name, current).tags.get(Tag.PREVIOUS_CHAMPION)
    if not previous:
        raise RegistryError(
            f"{model_name}: champion version {current} has no previous champion to roll back to"
        )
    client.set_model_version_tag(model_name, current, Tag.ROLLED_BACK_AT, utc_now())
    client.set_registered_model_alias(model_name, CHAMPION, previous)
    LOGGER.info("%s: rolled back champion %s -> %s", model_name, current, previous)
    return previous
