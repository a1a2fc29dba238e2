"""Filing applications: create, attach materials, submit to an authority, apply its decision.

Every step is one atomic storage commit with its audit event. The decisive one, approval,
writes the filing, the seal's new status and validity, and the receipt together: a seal never
becomes active without its receipt, nor a receipt exist for a filing still under review.
Submissions to remote authorities that fail stay ``submitted`` and are retried by
:meth:`FilingService.process_pending`; adapters are idempotent on the application id, and the
compare-and-set on the filing record makes the decision apply exactly once.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from gateway.audit import AuditLog
from gateway.clock import isoformat, parse, utcnow
from gateway.errors import (
    AuthorityUnreachable,
    Conflict,
    FieldError,
    InvalidTransition,
    MaterialUnreadable,
    NotFound,
    PayloadTooLarge,
    SealGateError,
    ValidationFailed,
)
from gateway.filing import authority_calls, states
from gateway.filing.adapters import (
    MAX_VALID_DAYS,
    AuthorityAnswerUnusable,
    AuthorityRefused,
    AuthorityUnavailable,
    Decision,
    FilingAdapter,
    WithdrawingAdapter,
)
from gateway.filing.materials import (
    MATERIAL_FIELDS_SENT,
    MATERIAL_KINDS,
    MATERIALS_ENCRYPTED,
    MAX_MATERIAL_BYTES,
    MIGRATION,
    MaterialStore,
    sniff_material,
)
from gateway.filing.receipts import (
    RECEIPT,
    RECEIPT_SEQUENCE,
    build_receipt,
    claim_receipt_number,
    receipt_write,
)
from gateway.idempotency_scope import CURRENT_SCOPE
from gateway.identifiers import (
    mask_id_number,
    mask_personal_numbers,
    mask_phone,
    validate_resident_id,
)
from gateway.keys.platform import PlatformSigner
from gateway.keys.registry import KEY
from gateway.privacy import PersonalDataVault
from gateway.seals.registry import SealRegistry
from gateway.settings import FilingSettings
from gateway.storage import BackendUnavailable, Record, StaleWrite, Storage, Write

log = logging.getLogger(__name__)

FILING = "filing"
REQUIRED_FOR_NEW = ("business_license", "legal_rep_id", "seal_impression")
# How often an approval claims the next receipt number after other approvals took the one it
# claimed; each retry means another approval was issued, so this bounds only a stampede.
NUMBERING_ATTEMPTS = 20
# [0-9], not \d: \d also matches fullwidth and other scripts' digits, which no one can dial.
_PHONE = re.compile(r"^(1[3-9][0-9]{9}|0[0-9]{2,3}-?[0-9]{7,8})$")
class FilingService:
    def __init__(
        self,
        settings: FilingSettings,
        storage: Storage,
        seals: SealRegistry,
        audit: AuditLog,
        vault: PersonalDataVault,
        platform: PlatformSigner,
        adapters: Mapping[str, FilingAdapter],
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._seals = seals
        self._audit = audit
        self._vault = vault
        self._materials = MaterialStore(storage, vault)
        self._platform = platform
        self.adapters = dict(adapters)

    # -- applications -----------------------------------------------------------------------

    async def create(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        seal = (await self._seals.record(_text(body, "seal_id"))).data
        action = _choice(body, "action", [a.value for a in states.FilingAction])
        authority = str(body.get("authority") or self._settings.default_authority)
        if authority not in self.adapters:
            raise ValidationFailed.one("authority", f"must be one of {', '.join(self.adapters)}")
        now = utcnow()
        states.check_action(
            seal["status"], action, expired=states.is_expired(parse(seal.get("valid_to")), now)
        )
        await self._require_certified_key(seal)
        applicant = _object(body, "applicant")
        phone = _text(applicant, "phone", "applicant.")
        if not _PHONE.match(phone):
            raise ValidationFailed.one(
                "applicant.phone", "must be a mainland mobile or landline number"
            )
        legal = _object(body, "legal_representative")
        id_number = validate_resident_id(legal.get("id_number"), "legal_representative.id_number")
        filing_id = str(uuid.uuid4())
        data = {
            "id": filing_id,
            "seal_id": seal["id"],
            "action": action,
            "authority": authority,
            "status": states.FilingStatus.DRAFT.value,
            # The phone is personal data too: encrypted like the ID number, shown masked.
            "applicant": {
                "name": _text(applicant, "name", "applicant."),
                "phone_masked": mask_phone(phone),
                "phone_encrypted": await self._vault.encrypt(phone, filing_id),
            },
            "legal_representative": {
                "name": _text(legal, "name", "legal_representative."),
                "id_number_masked": mask_id_number(id_number),
                "id_number_encrypted": await self._vault.encrypt(id_number, filing_id),
            },
            "materials": {},
            "created_at": isoformat(now),
            "submitted_at": None,
            "reference": None,
            "decision": None,
            "receipt_number": None,
            "seal_status_before": None,
        }
        await self._audit.commit(
            [Write(FILING, filing_id, 0, data)],
            [
                self._audit.event_sealer(
                    actor,
                    "filing.created",
                    f"filing/{filing_id}",
                    {"seal_id": seal["id"], "action": action, "authority": authority},
                )
            ],
        )
        return data

    async def get(self, filing_id: str) -> dict[str, Any]:
        return (await self._record(filing_id)).data

    async def list(self, seal_id: str | None = None) -> list[dict[str, Any]]:
        where = {"seal_id": seal_id} if seal_id else None
        return [r.data for r in await self._storage.list(FILING, where=where)]

    async def put_material(
        self, filing_id: str, kind: str, body: bytes, actor: str
    ) -> dict[str, Any]:
        if kind not in MATERIAL_KINDS:
            raise NotFound(f"unknown material kind '{kind}'; one of {', '.join(MATERIAL_KINDS)}")
        if len(body) > MAX_MATERIAL_BYTES:
            raise PayloadTooLarge(f"a material may have at most {MAX_MATERIAL_BYTES} bytes")
        content_type = sniff_material(body)
        record = await self._record(filing_id)
        self._require_status(record, states.FilingStatus.DRAFT)
        material = await self._materials.put(filing_id, body, content_type)
        data = {**record.data, "materials": {**record.data["materials"], kind: material}}
        await self._audit.commit(
            [Write(FILING, filing_id, record.version, data)],
            [
                self._audit.event_sealer(
                    actor,
                    "filing.material_added",
                    f"filing/{filing_id}",
                    {"kind": kind, "sha256": material["sha256"]},
                )
            ],
        )
        return data

    # -- submission -------------------------------------------------------------------------

    async def submit(self, filing_id: str, actor: str) -> dict[str, Any]:
        """draft → submitted (seal → pending status), then hand it to the authority.

        A keyed retry of a submission that was committed but never answered (its worker was
        killed) finishes the hand-over instead of failing on the status.
        """
        record = await self._record(filing_id)
        scope = CURRENT_SCOPE.get()
        keyed = scope.request_id() if scope is not None else None
        if scope is not None and keyed == record.data.get("submitted_by_request"):
            scope.recovered = True
            return await self._hand_over(filing_id)
        self._require_status(record, states.FilingStatus.DRAFT)
        filing = record.data
        self._adapter(filing["authority"])
        if filing["action"] == states.FilingAction.NEW:
            missing = [k for k in REQUIRED_FOR_NEW if k not in filing["materials"]]
            if missing:
                # Every missing one at once: the filer uploads them in one go.
                raise ValidationFailed([
                    FieldError(f"materials.{kind}", "is required before a new seal is submitted")
                    for kind in missing
                ])
        for kind, meta in filing["materials"].items():
            # Readable before anything is committed: one that is not is uploaded again now,
            # while the filing is a draft, not found by the hand-over after the submission.
            try:
                await self._materials.read(filing_id, kind, meta)
            except MaterialUnreadable as exc:
                raise MaterialUnreadable(f"{exc.detail}; upload it again") from exc
        seal = await self._seals.record(filing["seal_id"])
        await self._require_certified_key(seal.data)
        now = utcnow()
        states.check_action(
            seal.data["status"],
            filing["action"],
            expired=states.is_expired(parse(seal.data.get("valid_to")), now),
        )
        pending = states.seal_status_while_pending(seal.data["status"], filing["action"])
        data = {
            **filing,
            "status": states.FilingStatus.SUBMITTED.value,
            "submitted_at": isoformat(now),
            "seal_status_before": seal.data["status"],
            "submitted_by_request": keyed,
        }
        writes = [Write(FILING, filing_id, record.version, data)]
        seal_changes: dict[str, Any] = {}
        if pending != seal.data["status"]:
            seal_changes["status"] = pending.value
        if states.ACTION_RULES[states.FilingAction(filing["action"])].stops_signing_while_pending:
            # A seal reported lost must stop signing now, not when the authority gets to it.
            seal_changes["signing_stopped"] = {"reason": "loss-reported", "filing_id": filing_id}
        if seal_changes:
            writes.append(self._seals.status_write(seal, seal_changes))
        await self._audit.commit(
            writes,
            [
                self._audit.event_sealer(
                    actor,
                    "filing.submitted",
                    f"filing/{filing_id}",
                    {"seal_id": filing["seal_id"], "action": filing["action"]},
                )
            ],
        )
        return await self._hand_over(filing_id)

    async def _hand_over(self, filing_id: str) -> dict[str, Any]:
        """submitted → under_review once the authority has the application; while the
        authority is unavailable the filing stays submitted, for the poller to retry."""
        try:
            return await self._hand_over_now(filing_id)
        except AuthorityUnavailable as exc:
            log.warning("filing %s: will retry the hand-over: %s", filing_id, exc)
            return (await self._record(filing_id)).data

    async def _hand_over_now(self, filing_id: str) -> dict[str, Any]:
        """:meth:`_hand_over`, raising AuthorityUnavailable and MaterialUnreadable."""
        record = await self._record(filing_id)
        if record.data["status"] != states.FilingStatus.SUBMITTED:
            return record.data
        adapter = self._adapter(record.data["authority"])
        try:
            reference = await authority_calls.submit(adapter, await self._application(record.data))
        except AuthorityRefused as exc:
            return await self._decide(
                record,
                Decision("rejected", f"refused by authority: {exc}"),
                f"authority:{adapter.name}",
            )
        data = {
            **record.data,
            "status": states.FilingStatus.UNDER_REVIEW.value,
            "reference": reference,
        }
        try:
            await self._audit.commit(
                [Write(FILING, filing_id, record.version, data)],
                [
                    self._audit.event_sealer(
                        f"authority:{adapter.name}",
                        "filing.under_review",
                        f"filing/{filing_id}",
                        {"reference": reference},
                    )
                ],
            )
        except StaleWrite:
            return (await self._record(filing_id)).data
        return data

    async def _require_certified_key(self, seal: Mapping[str, Any]) -> None:
        """The receipt names the seal's certificate (DOMAIN.md §2), so a seal is filed only
        once its key has one."""
        key = await self._storage.get(KEY, str(seal["key_id"]))
        if key is None or not (key.data.get("certificate") or {}).get("sha256"):
            raise Conflict("the seal's key has no certificate yet; import one "
                           "(PUT /v1/keys/{id}/certificate) before filing the seal")

    async def _phone(self, filing: Mapping[str, Any]) -> str:
        applicant = filing["applicant"]
        if "phone_encrypted" in applicant:
            return await self._vault.decrypt(applicant["phone_encrypted"], filing["id"])
        return str(applicant["phone"])  # a filing stored before phones were encrypted

    async def encrypt_stored_materials(self) -> int:
        """Encrypt the materials stored before materials were encrypted, and blank their
        plain copies; returns how many. Run at start by every worker until one finds none
        left, which it records: new materials are encrypted as they come. A material
        another worker encrypted meanwhile is skipped (its record changed)."""
        if await self._storage.get(MIGRATION, MATERIALS_ENCRYPTED) is not None:
            return 0
        done, left = 0, 0
        for record in await self._storage.list(FILING, limit=1_000_000):
            plain = {k: m for k, m in record.data["materials"].items() if not m.get("encrypted")}
            materials = dict(record.data["materials"])
            for kind, meta in plain.items():
                try:
                    materials[kind] = await self._materials.encrypt_plain(record.key, kind, meta)
                except MaterialUnreadable as exc:
                    left += 1
                    now = await self._storage.get(FILING, record.key)
                    if now is not None and now.version == record.version:
                        log.warning("filing %s: %s", record.key, exc)  # gone or damaged
                    continue  # else another worker encrypted it meanwhile
            if any(materials[k].get("encrypted") for k in plain):
                try:
                    await self._storage.commit([Write(FILING, record.key, record.version,
                                                      {**record.data, "materials": materials})])
                except StaleWrite:
                    left += 1  # another worker's: the next start looks again
                    continue
            # Every plain copy of an encrypted material goes, also one that an earlier start
            # (stopped between its commit and here) left behind.
            for kind, meta in materials.items():
                if meta.get("encrypted") and await self._materials.blank_plain_copy(
                        record.key, kind):
                    done += 1
        if not left:
            with contextlib.suppress(StaleWrite):
                await self._storage.commit([Write(MIGRATION, MATERIALS_ENCRYPTED, 0,
                                                  {"at": isoformat(utcnow())})])
        return done

    async def _application(self, filing: Mapping[str, Any]) -> dict[str, Any]:
        seal = (await self._seals.record(filing["seal_id"])).data
        legal = filing["legal_representative"]
        materials = []
        for kind, meta in filing["materials"].items():
            content = await self._materials.read(filing["id"], kind, meta)
            materials.append(
                {"kind": kind, **{k: meta[k] for k in MATERIAL_FIELDS_SENT},
                 "content_b64": base64.b64encode(content).decode("ascii")}
            )
        return {
            "id": filing["id"],
            "action": filing["action"],
            "seal": {
                k: seal[k]
                for k in ("id", "seal_code", "name", "type", "organization", "image_sha256")
            },
            "applicant": {"name": filing["applicant"]["name"],
                          "phone": await self._phone(filing)},
            "legal_representative": {
                "name": legal["name"],
                "id_number": await self._vault.decrypt(legal["id_number_encrypted"], filing["id"]),
            },
            "materials": materials,
        }

    # -- decisions --------------------------------------------------------------------------

    async def review(
        self, filing_id: str, body: Mapping[str, Any], reviewer: str
    ) -> dict[str, Any]:
        record = await self._record(filing_id)
        adapter = self._adapter(record.data["authority"])
        if not adapter.reviews_locally:
            raise Conflict(f"authority '{adapter.name}' reviews filings itself")
        self._require_status(record, states.FilingStatus.UNDER_REVIEW)
        outcome = _choice(body, "decision", ["approve", "reject"])
        valid_days = body.get("valid_days")
        if valid_days is not None and (
            not isinstance(valid_days, int) or isinstance(valid_days, bool)
            or not 1 <= valid_days <= MAX_VALID_DAYS
        ):
            raise ValidationFailed.one(
                "valid_days", f"must be a whole number of days, 1 to {MAX_VALID_DAYS}")
        decision = Decision(
            "approved" if outcome == "approve" else "rejected",
            str(body.get("comment") or ""),
            valid_days,
        )
        return await self._decide(record, decision, reviewer)

    async def withdraw(
        self, filing_id: str, body: Mapping[str, Any], reviewer: str
    ) -> dict[str, Any]:
        """Withdraw a submitted application (filed by mistake, or one its authority will not
        decide): rejected with the reviewer's reason, and the seal back to the status it had,
        so that a new application can be made. A seal filed ``new`` would otherwise stay
        ``pending_filing`` for good.

        A remote authority is told first and the filing changes only once it has confirmed
        (see :mod:`gateway.filing.adapters` for when it cannot be reached, when it had
        decided already, and for adapters that cannot withdraw). A confirmed withdrawal that
        a poller recorded first (as the authority's rejection) stands: the reviewer's part
        is audited as ``filing.withdrawn``.
        """
        record = await self._record(filing_id)
        if record.data["status"] not in (states.FilingStatus.SUBMITTED,
                                         states.FilingStatus.UNDER_REVIEW):
            raise InvalidTransition(
                f"the filing is '{record.data['status']}'; only a submitted filing or one "
                f"under review is withdrawn")
        if record.data["action"] == states.FilingAction.REPORT_LOSS:
            # Its signing stop is lifted only by the authority's decision: a lost seal must
            # not sign again because a reviewer gave up waiting.
            raise InvalidTransition("a loss report is decided by its authority only; it is "
                                    "not withdrawn")
        reason = _text(body, "reason")
        withdrawal = Decision("rejected", f"withdrawn: {reason}", withdrawn=True)
        adapter = self.adapters.get(record.data["authority"])
        if adapter is not None and adapter.reviews_locally:
            return await self._decide(record, withdrawal, reviewer)
        record, not_told = await self._withdraw_remotely(record, adapter, reason)
        details: dict[str, Any] = {"authority_told": not_told is None}
        if not_told is not None:
            log.warning("filing %s is withdrawn without telling its authority (%s); tell it "
                        "the usual way", filing_id, not_told)
            # Kept in the audit log for good: masked like any text an authority sends.
            details["not_told_because"] = mask_personal_numbers(not_told)
        try:
            return await self._decide(record, withdrawal, reviewer, details)
        except StaleWrite as lost:
            if not_told is not None:
                raise
            return await self._withdrawn_by_a_poller(filing_id, reviewer, details, lost)

    async def _withdrawn_by_a_poller(
        self, filing_id: str, reviewer: str, details: Mapping[str, Any], lost: StaleWrite
    ) -> dict[str, Any]:
        """The filing a confirmed withdrawal lost its commit to: once the authority has
        confirmed, polling learns of the withdrawal too, and another worker's poller may
        have recorded it first, as the authority's rejection. The reviewer's part follows it
        in the audit log. Raises ``lost`` when something else changed the filing."""
        current = await self._record(filing_id)
        if not _withdrawn(current.data):
            raise lost
        await self._audit.commit([], [self._audit.event_sealer(
            reviewer, "filing.withdrawn", f"filing/{filing_id}",
            {**details, "rejected_by": current.data["decision"]["by"]})])
        return current.data

    async def _withdraw_remotely(
        self, record: Record, adapter: FilingAdapter | None, reason: str
    ) -> tuple[Record, str | None]:
        """Tell the authority; the filing as it stands once it has confirmed, and why the
        authority could not be told (None when it confirmed). Raises what the withdrawal
        answers when the authority neither confirmed nor can be left untold."""
        if adapter is None:
            return record, f"authority {record.data['authority']} is not installed"
        if not isinstance(adapter, WithdrawingAdapter):
            return record, f"authority {adapter.name} has no withdrawal call"
        if record.data["status"] == states.FilingStatus.SUBMITTED:
            record, not_handed_over = await self._hand_over_to_withdraw(record, adapter)
            if not_handed_over is not None:
                return record, not_handed_over
        reference = str(record.data["reference"])
        try:
            decided = await authority_calls.withdraw(adapter, reference, reason)
        except AuthorityAnswerUnusable as exc:
            # Reached, but of no use: the withdrawal does not wait for the authority to mend.
            return record, str(exc)
        except AuthorityUnavailable as exc:
            raise _unreachable(adapter) from exc
        except AuthorityRefused as exc:
            raise Conflict(f"authority {adapter.name} refuses the withdrawal and goes on "
                           f"reviewing the filing: {exc}") from exc
        if decided is not None:
            with contextlib.suppress(StaleWrite):  # the poller applied it meanwhile
                await self._decide(record, decided, f"authority:{adapter.name}")
            raise Conflict(f"authority {adapter.name} had decided the filing before the "
                           f"withdrawal reached it ({decided.outcome}); its decision stands")
        return record, None

    async def _hand_over_to_withdraw(
        self, record: Record, adapter: WithdrawingAdapter
    ) -> tuple[Record, str | None]:
        """The submitted filing once under review, to learn the reference to withdraw: the
        authority may hold the application although its answer was lost (submissions are
        idempotent). Why it cannot be handed over at all, if so: then the authority never
        had it, or cannot say."""
        try:
            await self._hand_over_now(record.key)
        except (MaterialUnreadable, AuthorityAnswerUnusable) as exc:
            return record, f"the application cannot be handed over: {exc}"
        except AuthorityUnavailable as exc:
            raise _unreachable(adapter) from exc
        record = await self._record(record.key)
        if record.data["status"] == states.FilingStatus.SUBMITTED:
            raise _unreachable(adapter)
        if record.data["status"] != states.FilingStatus.UNDER_REVIEW:
            raise Conflict(f"authority {adapter.name} refused the application meanwhile: "
                           f"the filing is '{record.data['status']}'")
        return record, None

    async def process_pending(
        self, still_ours: Callable[[], Awaitable[bool]] | None = None
    ) -> int:
        """Retry hand-overs and collect remote decisions; returns how many filings moved.

        Hand-overs to authorities that review locally are finished here too: a worker that
        died between submit's two commits leaves such a filing ``submitted``, where no
        reviewer can decide it. ``still_ours`` is asked before each filing (the poller's
        lease, renewed): when it says no, another worker polls now and the pass ends.
        """
        moved = failed = 0
        for status in (states.FilingStatus.SUBMITTED, states.FilingStatus.UNDER_REVIEW):
            pending = await self._storage.list(FILING, where={"status": status.value},
                                               limit=1_000_000)
            for record in pending:
                if still_ours is not None and not await still_ours():
                    log.info("the filing poller's lease passed to another worker")
                    return moved
                adapter = self.adapters.get(record.data["authority"])
                if adapter is None or (adapter.reviews_locally
                                       and status != states.FilingStatus.SUBMITTED):
                    continue
                try:
                    moved += await self._advance(record, adapter)
                except BackendUnavailable:
                    raise  # storage is down for every filing: the pass ends, said once
                except (AuthorityRefused, AuthorityAnswerUnusable, SealGateError) as exc:
                    # This filing needs a person (the authority lost it or decided what the
                    # gateway cannot apply, its decision no longer fits the seal, a material
                    # is lost); the others in the pass still advance.
                    log.warning("filing %s cannot advance: %s", record.key, exc)
                except (AuthorityUnavailable, StaleWrite) as exc:
                    log.info("filing %s not advanced now: %s", record.key, type(exc).__name__)
                except Exception:
                    # Not one of ours: a bug, logged with its traceback; the rest of the pass
                    # still advances, and this filing is tried again in the next.
                    failed += 1
                    log.exception("filing %s failed to advance", record.key)
        if failed:
            log.error("%d filing(s) failed to advance in this pass", failed)
        return moved

    async def _advance(self, record: Record, adapter: FilingAdapter) -> int:
        if record.data["status"] == states.FilingStatus.SUBMITTED:
            after = await self._hand_over(record.key)
            return int(after["status"] != states.FilingStatus.SUBMITTED)
        decision = await authority_calls.decision(adapter, str(record.data["reference"]))
        if decision is None:
            return 0
        await self._decide(record, decision, f"authority:{adapter.name}")
        return 1

    async def _decide(
        self, record: Record, decision: Decision, actor: str,
        about: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Apply ``decision`` to the filing as ``record`` shows it, in one commit with its
        audit event (``about`` adds to its details); StaleWrite when the filing changed since
        (another decider won: nothing of this one is kept)."""
        target = (
            states.FilingStatus.APPROVED
            if decision.outcome == "approved"
            else states.FilingStatus.REJECTED
        )
        states.check_filing_transition(_under_review(record.data)["status"], target)
        now = utcnow()
        for attempt in range(1, NUMBERING_ATTEMPTS + 1):
            decided, writes, details = await self._decision_writes(
                record, decision, target, actor, now)
            try:
                await self._audit.commit(
                    writes,
                    [
                        self._audit.event_sealer(
                            actor, f"filing.{target.value}", f"filing/{record.key}",
                            {**details, **(about or {})},
                        )
                    ],
                )
            except StaleWrite as exc:
                # Another approval issued the number claimed meanwhile: claim the next one.
                # It may be a worker of the earlier release, which takes numbers from the
                # counter and only its receipt record is then in the way.
                if exc.kind not in (RECEIPT_SEQUENCE, RECEIPT) or attempt == NUMBERING_ATTEMPTS:
                    raise
                continue
            return decided
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _decision_writes(
        self, record: Record, decision: Decision, target: states.FilingStatus, actor: str,
        now: dt.datetime,
    ) -> tuple[dict[str, Any], Sequence[Write], dict[str, Any]]:
        """The decided filing, the writes that record the decision, its audit details."""
        filing = _under_review(record.data)
        seal = await self._seals.record(filing["seal_id"])
        decided = {
            **filing,
            "status": target.value,
            "decision": {
                "outcome": decision.outcome,
                # Authorities and reviewers quote numbers back ("ID ... does not match"):
                # masked like every other copy of them.
                "comment": mask_personal_numbers(decision.comment),
                "decided_at": isoformat(now),
                "by": actor,
                "reference": decision.reference,
                **({"withdrawn": True} if decision.withdrawn else {}),
            },
        }
        writes = [Write(FILING, filing["id"], record.version, decided)]
        details: dict[str, Any] = {"outcome": decision.outcome, "seal_id": seal.key,
                                   **({"withdrawn": True} if decision.withdrawn else {})}
        if decision.outcome == "approved":
            claimed = await claim_receipt_number(self._storage, now)
            receipt, seal_changes = await self._receipt_for(
                decided, seal, decision, now, claimed.number)
            decided["receipt_number"] = receipt["number"]
            writes.append(claimed.claim)
            writes.append(receipt_write(receipt))
            writes.append(self._seals.status_write(seal, seal_changes))
            details["receipt_number"] = receipt["number"]
        else:
            restored = states.seal_status_on_rejection(
                seal.data["status"], filing["seal_status_before"], filing["action"]
            )
            changes: dict[str, Any] = {}
            if restored != seal.data["status"]:
                changes["status"] = restored.value
            if _stopped_by(seal.data, filing["id"]):
                changes["signing_stopped"] = None
            if changes:
                writes.append(self._seals.status_write(seal, changes))
        return decided, writes, details

    async def _receipt_for(
        self, filing: dict[str, Any], seal: Record, decision: Decision, now: dt.datetime,
        number: str,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        new_status = states.seal_status_on_approval(seal.data["status"], filing["action"])
        valid_from, valid_to = parse(seal.data.get("valid_from")), parse(seal.data.get("valid_to"))
        # A change alters the filed details only: its receipt carries the seal's period as it
        # stands (an expired seal is renewed first, so it never needs to extend it).
        if filing["action"] in (states.FilingAction.NEW, states.FilingAction.RENEW):
            days = dt.timedelta(days=decision.valid_days or self._settings.receipt_valid_days)
            if filing["action"] == states.FilingAction.RENEW and valid_to and valid_to > now:
                # Renewed before expiry: the period continues from the old end, so the seal
                # keeps signing without a gap.
                valid_to = valid_to + days
            else:
                valid_from, valid_to = now, now + days
            # Renewals stacked one on another end at most ten years from the decision.
            valid_to = min(valid_to, now + dt.timedelta(days=MAX_VALID_DAYS))
        key = await self._storage.get(KEY, str(seal.data["key_id"]))
        valid_to = _within_certificate(valid_to, key.data if key else {}, filing["action"], now)
        adapter = self._adapter(filing["authority"])
        receipt = build_receipt(
            number=number,
            authority={"id": adapter.name, "name": adapter.display_name},
            filing=filing,
            seal=seal.data,
            key=key.data if key else {},
            seal_status=new_status.value,
            valid_from=valid_from,
            valid_to=valid_to,
            issued_at=now,
            authority_reference=decision.reference or str(filing.get("reference") or ""),
        )
        receipt["signature"] = await self._platform.sign(receipt)
        changes = {
            "status": new_status.value,
            "receipt_number": number,
            "valid_from": isoformat(valid_from) if valid_from else None,
            "valid_to": isoformat(valid_to) if valid_to else None,
        }
        if _stopped_by(seal.data, filing["id"]):
            changes["signing_stopped"] = None
        return receipt, changes

    async def file_and_approve_locally(
        self,
        seal_id: str,
        applicant: Mapping[str, str],
        legal: Mapping[str, str],
        actor: str,
    ) -> dict[str, Any]:
        """The whole `new` filing through the local authority, as `sealgate init --demo` does."""
        filing = await self.create(
            {
                "seal_id": seal_id,
                "action": "new",
                "authority": "local",
                "applicant": applicant,
                "legal_representative": legal,
            },
            actor,
        )
        png = await self._seals.image(seal_id)
        for kind in REQUIRED_FOR_NEW:
            await self.put_material(filing["id"], kind, png, actor)
        await self.submit(filing["id"], actor)
        return await self.review(filing["id"], {"decision": "approve"}, actor)

    # -- helpers ----------------------------------------------------------------------------

    async def _record(self, filing_id: str) -> Record:
        record = await self._storage.get(FILING, filing_id)
        if record is None:
            raise NotFound(f"no filing with id {filing_id}")
        return record

    def _adapter(self, authority: str) -> FilingAdapter:
        adapter = self.adapters.get(authority)
        if adapter is None:
            raise Conflict(f"the filing's authority '{authority}' is not installed on this "
                           "gateway; install and enable its plugin to go on with the filing")
        return adapter

    @staticmethod
    def _require_status(record: Record, status: states.FilingStatus) -> None:
        if record.data["status"] != status:
            raise InvalidTransition(
                f"the filing is '{record.data['status']}'; this needs it '{status.value}'"
            )


def public_view(filing: Mapping[str, Any]) -> dict[str, Any]:
    """A filing as the API shows it: the ID and phone numbers masked, never their
    ciphertext."""
    legal, applicant = filing["legal_representative"], filing["applicant"]
    phone = applicant.get("phone_masked") or mask_phone(str(applicant.get("phone")))
    return {
        **{
            k: v
            for k, v in filing.items()
            if k not in ("legal_representative", "applicant", "seal_status_before",
                         "submitted_by_request")
        },
        "applicant": {"name": applicant["name"], "phone": phone},
        "legal_representative": {"name": legal["name"], "id_number": legal["id_number_masked"]},
        # Masked when decided too; decisions kept before that are masked here.
        **({"decision": {**decision, "comment": mask_personal_numbers(decision["comment"])}}
           if (decision := filing.get("decision")) and decision.get("comment") else {}),
    }


def _text(body: Mapping[str, Any], field: str, prefix: str = "") -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed.one(prefix + field, "is required")
    if len(value) > 200:
        raise ValidationFailed.one(prefix + field, "must be at most 200 characters")
    return value.strip()


def _object(body: Mapping[str, Any], field: str) -> Mapping[str, Any]:
    value = body.get(field)
    if not isinstance(value, Mapping):
        raise ValidationFailed.one(field, "must be an object")
    return value


def _choice(body: Mapping[str, Any], field: str, allowed: list[str]) -> str:
    value = body.get(field)
    if value not in allowed:
        raise ValidationFailed.one(field, f"must be one of {', '.join(allowed)}")
    return str(value)


def _unreachable(adapter: FilingAdapter) -> AuthorityUnreachable:
    return AuthorityUnreachable(f"authority {adapter.name} cannot be reached to withdraw the "
                                "filing; nothing changed, retry later")


def _within_certificate(
    valid_to: dt.datetime | None, key: Mapping[str, Any], action: str, now: dt.datetime
) -> dt.datetime | None:
    """``valid_to`` ending no later than the certificate the receipt names: a receipt that
    outlived it would call a seal filed that can no longer sign."""
    not_after = parse((key.get("certificate") or {}).get("not_after"))
    if not_after is None or valid_to is None or valid_to <= not_after:
        return valid_to
    if action in (states.FilingAction.NEW, states.FilingAction.RENEW) and not_after <= now:
        raise Conflict(f"the seal's certificate expired at {isoformat(not_after)}; import a "
                       "new one (PUT /v1/keys/{id}/certificate) before approving")
    return not_after


def _under_review(filing: dict[str, Any]) -> dict[str, Any]:
    """The filing as a decision finds it: one still ``submitted`` (a refusal on hand-over)
    is decided as if under review."""
    if filing["status"] == states.FilingStatus.SUBMITTED:
        return {**filing, "status": states.FilingStatus.UNDER_REVIEW.value}
    return filing


def _withdrawn(filing: Mapping[str, Any]) -> bool:
    """Whether the filing is rejected because it was withdrawn (by a reviewer, or as its
    authority shows it)."""
    decision = filing.get("decision") or {}
    return filing["status"] == states.FilingStatus.REJECTED and decision.get("withdrawn") is True


def _stopped_by(seal: Mapping[str, Any], filing_id: str) -> bool:
    """Whether the seal's signing stop is this filing's (a loss report under review): only
    its own decision lifts it, not that of another filing for the same seal."""
    stopped = seal.get("signing_stopped")
    return isinstance(stopped, Mapping) and stopped.get("filing_id") == filing_id
