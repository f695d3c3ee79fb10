"""The auditors' pages: verify and reconcile the ledgers, check copies, read entries, prove, plot.

Read-only, and built on the same library calls as `liaison audit`: the live
ledgers are verified and reconciled as `liaison audit reconcile --federation
--allow-unsigned-tail` does (:func:`~liaison.ledger.reconcile.reconcile_files`),
an uploaded copy as `liaison audit verify` does, proofs are the files `liaison
audit prove` writes, and entries are the rows `liaison audit show` prints.

```toml
[console.audit]
federation = "/srv/liaison"        # a federation folder: gateway/, nodes/<id>/
audit_key = "/srv/liaison/audit/audit.key"   # optional: selector search
# or, instead of (or beside) a federation folder:
gateway_ledger = "gateway/ledger.sqlite3"    # a file or a database URL
gateway_key = "gateway/gateway.pub"
[[console.audit.node]]
id = "ruritania"
receipts = "nodes/ruritania/state/receipts.sqlite3"
key = "nodes/ruritania/node.pub"
```

A selector value searched for is posted, hashed under the audit key at once,
and never put in a URL, a log line or the session.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from liaison.config import TableReader
from liaison.console import plots
from liaison.console.audit_copies import CopiesBusy, Upload, check_copies
from liaison.console.audit_ledgers import (
    KINDS,
    MAX_ROWS,
    PLOTS,
    AuditResult,
    CheckpointLine,
    EntryQuery,
    Ledgers,
    audit_live,
    catalog_fields,
    checkpoint_lines,
    find_entries,
    make_consistency,
    make_inclusion,
    proof_file,
    read_settings,
    selector_hash,
    whole_number,
)
from liaison.console.oidc import SignedIn
from liaison.console.web import (
    Console,
    Side,
    action,
    form_text,
    keep,
    kept_or_404,
    see_other,
    view,
)
from liaison.errors import (
    InvalidQuery,
    NotFound,
)
from liaison.ledger.checkpoint import parse_unverified
from liaison.ledger.reconcile import (
    LedgerFiles,
)
from liaison.ledger.store import LedgerStore
from liaison.ledger.views import rows


@dataclass(slots=True)
class PlotCache:
    """Plot data and images of the gateway's ledger, kept while its size stays the same."""

    size: int = -1
    data: plots.PlotData | None = None
    images: dict[str, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self, files: LedgerFiles) -> plots.PlotData:
        store = LedgerStore(files.location, create=False)
        try:
            size = store.size()
            with self.lock:
                if self.data is not None and size == self.size:
                    return self.data
            data = plots.plot_data(rows(store), size)
        finally:
            store.close()
        with self.lock:
            # Another request may have drawn a newer ledger meanwhile: keep the newest.
            if size > self.size:
                self.size, self.data, self.images = size, data, {}
        return data

    def image(self, files: LedgerFiles, name: str) -> bytes:
        data = self.current(files)
        with self.lock:
            cached = self.images.get(name) if self.size == data.size else None
        if cached is not None:
            return cached
        png = _draw(data, name)
        with self.lock:
            if self.size == data.size:
                self.images[name] = png
        return png


def _draw(data: plots.PlotData, name: str) -> bytes:
    if name == "queries-by-agency":
        return plots.timeline_png(data.by_agency, "Queries per agency")
    if name == "queries-by-purpose":
        return plots.timeline_png(data.by_purpose, "Queries per purpose")
    if name == "denials-by-rule":
        return plots.denials_png(data.denials)
    return plots.latency_png(data.latency)


# -- the pages -----------------------------------------------------------------


MAX_COPIES_BYTES = 256 * 1024 * 1024
# A copy per ledger: the gateway's and each node's receipts.
MAX_COPIES = 256


def side(console: Console, table: TableReader) -> Side:
    settings = read_settings(table)
    ledgers = Ledgers(settings)
    cache = PlotCache()
    # Ledger copies are uploaded whole; bigger ones are for `liaison audit verify`.
    console.body_limits["/audit/copies"] = MAX_COPIES_BYTES
    s = Side(
        name="audit",
        title="Audit",
        role=table.text("role", "auditor"),
        home="/audit",
        routes=[],
        nav=[
            ("/audit", "Verify"),
            ("/audit/copies", "Ledger copies"),
            ("/audit/entries", "Entries"),
            ("/audit/proofs", "Proofs"),
            ("/audit/plots", "Plots"),
        ],
    )

    def page(request: Request, template: str, title: str, **context: Any) -> Response:
        return console.render(request, template, title=title, **context)

    async def home(request: Request, user: SignedIn) -> Response:
        gateway, nodes = await run_in_threadpool(ledgers.all)
        return page(request, "audit_home.html", "Verify the ledgers", ledgers=[gateway, *nodes])

    async def verify(request: Request, user: SignedIn, form: FormData) -> Response:
        result = await run_in_threadpool(audit_live, ledgers)
        return see_other(f"/audit/result/{keep(request, result)}#result")

    async def verified(request: Request, user: SignedIn) -> Response:
        result = kept_result(request)
        gateway, nodes = await run_in_threadpool(ledgers.all)
        return page(
            request,
            "audit_home.html",
            "Verify the ledgers",
            ledgers=[gateway, *nodes],
            result=result,
        )

    async def copies(request: Request, user: SignedIn) -> Response:
        names = await run_in_threadpool(ledgers.names)
        return page(request, "audit_copies.html", "Check ledger copies", names=names)

    async def upload(request: Request, user: SignedIn, form: FormData) -> Response:
        names = await run_in_threadpool(ledgers.names)
        uploads = []
        for name in names:
            part = form.get(f"copy-{name}")
            if isinstance(part, UploadFile) and (part.filename or part.size):
                # The parser spooled the part to a file; it is streamed on from there.
                uploads.append(Upload(name, part.filename or "", part.file))
        if not uploads:
            raise InvalidQuery("choose at least one ledger copy to check")
        tail = form.get("unsigned_tail") == "warn"
        try:
            result = await run_in_threadpool(
                lambda: check_copies(uploads, ledgers, allow_unsigned_tail=tail)
            )
        except CopiesBusy as exc:
            raise HTTPException(503, str(exc)) from exc
        return see_other(f"/audit/copies/result/{keep(request, result)}#result")

    async def checked(request: Request, user: SignedIn) -> Response:
        result = kept_result(request)
        names = await run_in_threadpool(ledgers.names)
        return page(request, "audit_copies.html", "Check ledger copies", names=names, result=result)

    async def entries_page(request: Request, query: EntryQuery, keyed: str = "") -> Response:
        names = await run_in_threadpool(ledgers.names)
        files = await run_in_threadpool(ledgers.named, query.ledger)
        found = await run_in_threadpool(find_entries, files, query, keyed)
        return page(
            request,
            "audit_entries.html",
            "Ledger entries",
            names=names,
            q=query,
            kinds=KINDS,
            found=found,
            max_rows=MAX_ROWS,
            selector=keyed,
            searchable=settings.audit_key is not None,
            fields=catalog_fields(),
        )

    async def entries(request: Request, user: SignedIn) -> Response:
        # No filters here: they are posted, never put in an address (see filtered).
        return await entries_page(request, EntryQuery())

    async def filter_entries(request: Request, user: SignedIn, form: FormData) -> Response:
        query = _default_ledger(EntryQuery.of(lambda name: form_text(form, name)))
        query.filters()  # a mistake is told now, not after the redirect
        return see_other(f"/audit/entries/{keep(request, query)}#found")

    async def filtered(request: Request, user: SignedIn) -> Response:
        query = kept_or_404(request, request.path_params["key"])
        if not isinstance(query, EntryQuery):
            raise NotFound("that filter is no longer kept; filter the entries again")
        return await entries_page(request, query)

    async def search(request: Request, user: SignedIn, form: FormData) -> Response:
        # Rendered here, not redirected: the selector's hash is not for a URL either.
        if settings.audit_key is None:
            raise InvalidQuery(
                "selector search needs the audit key: set `audit_key` under [console.audit]"
            )
        query = _default_ledger(EntryQuery.of(lambda name: form_text(form, name)))
        value = form_text(form, "selector")
        if not value:
            raise InvalidQuery("type the selector value to search for")
        keyed = await run_in_threadpool(
            selector_hash, value, form_text(form, "field"), settings.audit_key
        )
        return await entries_page(request, query, keyed)

    async def proofs(request: Request, user: SignedIn) -> Response:
        def read() -> list[tuple[str, list[CheckpointLine]]]:
            gateway, nodes = ledgers.all()
            return [(f.name, checkpoint_lines(f)) for f in (gateway, *nodes)]

        return page(
            request, "audit_proofs.html", "Proof files", ledgers=await run_in_threadpool(read)
        )

    async def inclusion(request: Request, user: SignedIn) -> Response:
        params = request.query_params
        files = await run_in_threadpool(ledgers.named, params.get("ledger", "gateway"))
        index = whole_number(params.get("index", ""), "the entry's index")
        document = await run_in_threadpool(make_inclusion, files, index)
        return proof_file(document, f"{files.name}-inclusion-{index}.json")

    async def consistency(request: Request, user: SignedIn) -> Response:
        params = request.query_params
        files = await run_in_threadpool(ledgers.named, params.get("ledger", "gateway"))
        old = whole_number(params.get("old", ""), "the earlier size")
        newer = params.get("new", "").strip()
        new = whole_number(newer, "the later size") if newer else None
        document = await run_in_threadpool(make_consistency, files, old, new)
        size = parse_unverified(document["new_checkpoint"]).size
        return proof_file(document, f"{files.name}-consistency-{old}-{size}.json")

    async def plot_page(request: Request, user: SignedIn) -> Response:
        gateway, _ = await run_in_threadpool(ledgers.all)
        data = await run_in_threadpool(cache.current, gateway)
        return page(request, "audit_plots.html", "Plots", data=data, plots=PLOTS)

    async def plot_image(request: Request, user: SignedIn) -> Response:
        name = request.path_params["name"]
        if name not in PLOTS:
            raise NotFound(f"no plot {name!r}; the plots are {', '.join(PLOTS)}")
        gateway, _ = await run_in_threadpool(ledgers.all)
        png = await run_in_threadpool(cache.image, gateway, name)
        return Response(png, media_type="image/png")

    s.routes.extend(
        [
            view("/audit", s, home),
            action("/audit/verify", s, verify, max_files=0),
            view("/audit/result/{key}", s, verified),
            view("/audit/copies", s, copies),
            action("/audit/copies", s, upload, max_files=MAX_COPIES),
            view("/audit/copies/result/{key}", s, checked),
            view("/audit/entries", s, entries),
            action("/audit/entries", s, filter_entries, max_files=0),
            view("/audit/entries/{key}", s, filtered),
            action("/audit/entries/selector", s, search, max_files=0),
            view("/audit/proofs", s, proofs),
            view("/audit/proofs/inclusion", s, inclusion),
            view("/audit/proofs/consistency", s, consistency),
            view("/audit/plots", s, plot_page),
            view("/audit/plots/{name}.png", s, plot_image),
        ]
    )
    return s


def kept_result(request: Request) -> AuditResult:
    # Filters are kept in this section too: a filter's key is not a result's.
    result = kept_or_404(request, request.path_params["key"])
    if not isinstance(result, AuditResult):
        raise NotFound("that result is no longer kept; run the check again")
    return result


def _default_ledger(query: EntryQuery) -> EntryQuery:
    return query if query.ledger else replace(query, ledger="gateway")
