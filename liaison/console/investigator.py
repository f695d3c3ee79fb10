"""The investigators' pages: compose a query, dry-run it, run it, follow up a hit.

Everything goes through `liaison.client` with the investigator's own token,
exactly as `liaison query` does, so a console query is the same ledger entry
as a CLI one. Answers are checked against each agency's public key here, on
the console's server, as the CLI checks them; the tables are built from the
same dictionaries as `liaison query --json`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import Response

from liaison import client
from liaison.answer_check import SearchWindow, load_node_keys, now_ms
from liaison.catalog import CATALOG_V1
from liaison.cli.followup import examine, to_dict
from liaison.cli.query_cmd import check_locally
from liaison.cli.render import dry_run_to_dict, result_to_dict
from liaison.cli.verify_answers import Verification
from liaison.config import TableReader
from liaison.console.oidc import SignedIn
from liaison.console.web import (
    Console,
    Side,
    action,
    form_text,
    keep,
    kept_or_404,
    see_other,
    session_of,
    view,
)
from liaison.errors import InvalidQuery, UsageError
from liaison.followups import FollowUpFiling, Urgency
from liaison.messages import SearchInput
from liaison.query import (
    DEFAULT_NEAR_DISTANCE,
    MAX_IN_VALUES,
    Comparator,
    Operation,
    Predicate,
    Query,
)

OPERATIONS = {
    "match": ("Hit / no hit", Operation.MATCH),
    "records": ("Records (released fields)", Operation.RECORDS),
    "count": ("Count", Operation.COUNT),
    "count_by": ("Count by a field", Operation.COUNT_BY),
}
MAX_HASH_FILE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    address: str
    ca: Path | None
    verification: Verification


def _settings(table: TableReader) -> GatewaySettings:
    table.check_keys({"address", "ca", "node_keys", "role"})
    keys_path = table.path("node_keys", "") if "node_keys" in table.table else None
    if keys_path is not None:
        verification = Verification(load_node_keys(keys_path), f"node keys in {keys_path}")
    else:
        verification = Verification(None, "no node_keys in [console.gateway]")
    return GatewaySettings(
        address=table.text("address"),
        ca=table.path("ca") if "ca" in table.table else None,
        verification=verification,
    )


def side(console: Console, table: TableReader) -> Side:
    settings = _settings(table)
    s = Side(
        name="gateway",
        title="Investigation",
        role=table.text("role", "investigator"),
        home="/investigate",
        routes=[],
        nav=[("/investigate", "New query"), ("/followups", "Follow-ups")],
    )
    pages = _Pages(console, settings)
    s.routes.extend(
        [
            view("/investigate", s, pages.compose),
            action("/investigate", s, pages.submit, max_files=1),
            view("/investigate/result/{key}", s, pages.result),
            action("/followups/new", s, pages.file_followup, max_files=0),
            view("/followups", s, pages.followups),
            view("/followups/{followup_id}", s, pages.followup),
        ]
    )
    return s


def _values(form: FormData) -> list[str]:
    text = form_text(form, "values")
    return [v.strip() for line in text.splitlines() for v in line.split(",") if v.strip()]


async def _hash_file(form: FormData) -> list[str]:
    upload = form.get("hash_file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return []
    data = await upload.read(MAX_HASH_FILE_BYTES + 1)
    if len(data) > MAX_HASH_FILE_BYTES:
        raise UsageError("the hash list is over 8 MB; split it, or use `liaison query --hashes`")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the hash list must be UTF-8 text, one hash a line") from None
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


async def search_from(form: FormData) -> SearchInput:
    """The search a compose form describes, checked as the CLI checks it before sending."""
    op_name = form_text(form, "operation", "match")
    if op_name not in OPERATIONS:
        raise UsageError(f"unknown operation {op_name!r}; choose one of {', '.join(OPERATIONS)}")
    operation = OPERATIONS[op_name][1]
    field = form_text(form, "field")
    values = _values(form) + await _hash_file(form)
    # The same value pasted twice asks once.
    values = list(dict.fromkeys(values))
    if len(values) > MAX_IN_VALUES:
        raise UsageError(
            f"at most {MAX_IN_VALUES} values in one query, got {len(values)}; for more, "
            "use `liaison query --hashes FILE`, which sends them in chunks"
        )
    predicates: tuple[Predicate, ...] = ()
    if values:
        if not field:
            raise UsageError("choose the field the values are (sha256, pdq, email, ...)")
        if form_text(form, "comparator") == "near":
            text = form_text(form, "distance") or str(DEFAULT_NEAR_DISTANCE)
            if not text.isdigit():
                raise UsageError(
                    f"the distance must be a whole number of bits, e.g. {DEFAULT_NEAR_DISTANCE}"
                )
            distance = int(text)
            predicates = (Predicate(field, Comparator.NEAR, tuple(values), distance),)
        elif len(values) == 1:
            predicates = (Predicate(field, Comparator.EQ, (values[0],)),)
        else:
            predicates = (Predicate(field, Comparator.IN, tuple(values)),)
    fields = tuple(str(f) for f in form.getlist("fields") if isinstance(f, str) and f.strip())
    query = Query(
        dataset=form_text(form, "dataset", "media"),
        operation=operation,
        predicates=predicates,
        fields=fields if operation is Operation.RECORDS else (),
        group_by=(form_text(form, "group_by") or None) if operation is Operation.COUNT_BY else None,
    )
    search = SearchInput(
        query,
        form_text(form, "purpose"),
        form_text(form, "case_ref"),
        legal_basis=form_text(form, "legal_basis"),
    )
    try:
        return check_locally(search)
    except UsageError as exc:
        raise InvalidQuery(str(exc).replace("--purpose: ", "purpose: ")) from exc


def catalog_choices() -> dict[str, Any]:
    return {
        "datasets": [
            {
                "name": d.name,
                "description": d.description,
                "fields": [f.name for f in d.fields],
                "selectors": [f.name for f in d.fields if f.selector],
            }
            for d in CATALOG_V1.datasets
        ],
        "purposes": CATALOG_V1.purposes,
        "operations": [(k, label) for k, (label, _) in OPERATIONS.items()],
        "urgencies": [u.value for u in Urgency],
    }


class _Pages:
    def __init__(self, console: Console, settings: GatewaySettings) -> None:
        self.console = console
        self.settings = settings

    async def compose(self, request: Request, user: SignedIn) -> Response:
        return self.console.render(
            request,
            "inv_compose.html",
            title="New query",
            catalog=catalog_choices(),
            form={},
            default_distance=DEFAULT_NEAR_DISTANCE,
        )

    async def submit(self, request: Request, user: SignedIn, form: FormData) -> Response:
        search = await search_from(form)
        g = self.settings
        if form_text(form, "do") == "dry-run":
            dry = await run_in_threadpool(
                client.dry_run, g.address, user.access_token, search, 30, g.ca
            )
            shown = {"kind": "dry-run", "dry_run": dry_run_to_dict(dry), "search": search}
        else:
            sent = now_ms()
            result = await run_in_threadpool(
                client.search, g.address, user.access_token, search, 30, g.ca
            )
            window = SearchWindow(sent, now_ms())
            check = await run_in_threadpool(g.verification.check, result, search, window)
            shown = {
                "kind": "search",
                "result": result_to_dict(result, check, g.verification.source),
                "search": search,
            }
        session = session_of(request)
        assert session is not None
        # Redirect-after-post: the result is kept here, its selectors never in a URL.
        return see_other(f"/investigate/result/{keep(request, shown)}")

    async def result(self, request: Request, user: SignedIn) -> Response:
        shown = kept_or_404(request, request.path_params["key"])
        search: SearchInput = shown["search"]
        return self.console.render(
            request,
            "inv_result.html",
            title="Dry run" if shown["kind"] == "dry-run" else "Answers",
            shown=shown,
            search=search,
            catalog=catalog_choices(),
        )

    async def file_followup(self, request: Request, user: SignedIn, form: FormData) -> Response:
        fields = tuple(f.strip() for f in form_text(form, "fields").split(",") if f.strip())
        urgency = form_text(form, "urgency", Urgency.ROUTINE.value)
        try:
            urgency_value = Urgency(urgency)
        except ValueError:
            choices = ", ".join(u.value for u in Urgency)
            raise UsageError(f"unknown urgency {urgency!r}; choose one of {choices}") from None
        filing = FollowUpFiling(
            query_id=form_text(form, "query_id"),
            node_id=form_text(form, "node_id"),
            record_refs=tuple(r for r in form_text(form, "record_refs").split(",") if r),
            fields=fields,
            purpose=form_text(form, "purpose"),
            case_ref=form_text(form, "case_ref"),
            urgency=urgency_value,
            legal_basis=form_text(form, "legal_basis"),
            text=form_text(form, "text"),
        )
        g = self.settings
        filed = await run_in_threadpool(
            client.file_followup, g.address, user.access_token, filing, 30, g.ca
        )
        return see_other(f"/followups/{filed.followup_id}")

    async def followups(self, request: Request, user: SignedIn) -> Response:
        g = self.settings
        views = await run_in_threadpool(
            lambda: client.list_followups(g.address, user.access_token, tls_ca=g.ca)
        )
        now = int(time.time() * 1000)
        # Checking each decision's signature is CPU work: off the event loop.
        rows = await run_in_threadpool(
            lambda: [to_dict(examine(v, g.verification), g.verification, now) for v in views]
        )
        return self.console.render(request, "inv_followups.html", title="Follow-ups", rows=rows)

    async def followup(self, request: Request, user: SignedIn) -> Response:
        g = self.settings
        followup_id = request.path_params["followup_id"]
        one = await run_in_threadpool(
            client.get_followup, g.address, user.access_token, followup_id, 30, g.ca
        )
        now = int(time.time() * 1000)
        shown = await run_in_threadpool(
            lambda: to_dict(examine(one, g.verification), g.verification, now)
        )
        return self.console.render(
            request, "inv_followup.html", title=f"Follow-up {followup_id}", f=shown
        )
