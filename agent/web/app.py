"""The pages' routes: the officer page (kiosk), the IT page, their live streams and actions.

Routes (every other path or method is refused; none deletes anything):

    GET  /                 officer page            GET  /events       its live stream
    GET  /it               IT page (signed in)     GET  /it/events    its live stream
    GET  /it/signin        sign-in form            POST /it/signin    sign in
    POST /it/signout       sign out                POST /it/requeue   requeue a quarantined clip
    GET  /static/...       style sheets, scripts
    /officer/...           officer sign-in at the screen, the officer's actions and the
                           thumbnails of their clips (agent/web/officerpages.py; 404 on a
                           station that checks no officer credentials)

Every POST checks its CSRF token and Origin before anything else and, when
refused, changes nothing and logs nothing to the custody log.  No route
reads the vault: no page plays or downloads evidence.  Every action
that is done is a custody log entry naming who did it.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from agent.config import Config, is_loopback
from agent.errors import AgentError, StoreError
from agent.overview import dock_views
from agent.progress import ProgressRegistry
from agent.requeue import RequeueRefused, requeue_clip
from agent.store import Store
from agent.vault import Vault
from agent.web import itview, views
from agent.web.accounts import AccountError, Accounts
from agent.web.i18n import Catalogs, Language
from agent.web.live import Live, TooManyStreams
from agent.web.officerpages import OfficerPages, ended_body
from agent.web.officers import OfficerSignIn, Refusals
from agent.web.security import (
    CLIP_ID,
    CSRF_COOKIE,
    CSRF_FIELD,
    Csrf,
    Guard,
    same_origin,
    token_ok,
)
from agent.web.sessions import Session, Sessions, SignInLimiter

log = logging.getLogger(__name__)

SESSION_COOKIE = "bwc_session"
NOTICES = ("requeued",)


@dataclass
class WebContext:
    """What the pages read and act on; shared with the station, owned by nobody here."""

    config: Config
    store: Store
    vault: Vault | None
    progress: ProgressRegistry | None
    catalogs: Catalogs
    accounts: Accounts
    sessions: Sessions
    limiter: SignInLimiter
    tls: bool
    officer_sign_in: OfficerSignIn | None = None
    officer_limiter: SignInLimiter = field(default_factory=lambda: SignInLimiter(10, 60))
    officer_refusals: Refusals = field(default_factory=Refusals)
    csrf: Csrf = field(default_factory=Csrf)
    live: Live | None = None
    daemon: Callable[[], dict[str, Any] | None] | None = None  # the daemon's own facts


def _resource_dir(name: str) -> Path:
    return Path(str(importlib.resources.files("agent.web") / name))


def build_app(ctx: WebContext, allowed_hosts: list[str]) -> ASGIApp:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_resource_dir("templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    pages = Pages(ctx, env)
    officer = OfficerPages(pages)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        import asyncio

        ctx.live = Live(version=lambda: ctx.progress.version if ctx.progress else 0,
                        figures=pages.figures, render=pages.render,
                        session_alive=lambda sid: ctx.sessions.get(sid) is not None,
                        housekeeping=pages.end_expired_sessions)
        task = asyncio.create_task(ctx.live.run())
        try:
            yield
        finally:
            ctx.live.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    routes = [
        Route("/", pages.kiosk, methods=["GET"]),
        Route("/events", pages.kiosk_events, methods=["GET"]),
        Route("/it", pages.it, methods=["GET"]),
        Route("/it/events", pages.it_events, methods=["GET"]),
        Route("/it/signin", pages.signin_form, methods=["GET"]),
        Route("/it/signin", pages.signin, methods=["POST"]),
        Route("/it/signout", pages.signout, methods=["POST"]),
        Route("/it/requeue", pages.requeue, methods=["POST"]),
        Route("/officer/session", officer.session_info, methods=["GET"]),
        Route("/officer/signin", officer.signin, methods=["POST"]),
        Route("/officer/signout", officer.signout, methods=["POST"]),
        Route("/officer/clips", officer.clips, methods=["GET"]),
        Route("/officer/thumbnail/{clip_id}", officer.thumbnail, methods=["GET"]),
        Route("/officer/tag", officer.tag, methods=["POST"]),
        Route("/officer/untag", officer.untag, methods=["POST"]),
        Route("/officer/important", officer.important, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=_resource_dir("static")), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    return Guard(app, allowed_hosts=allowed_hosts, tls=ctx.tls)


class Pages:
    def __init__(self, ctx: WebContext, env: jinja2.Environment) -> None:
        self.ctx = ctx
        self.env = env

    # --- helpers ---------------------------------------------------------------------------

    def lang(self, request: Request) -> Language:
        return self.ctx.catalogs.pick(request.query_params.get("lang"))

    def page(self, template: str, request: Request, lang: Language, status: int = 200,
             **values: Any) -> HTMLResponse:
        languages = [{"code": item.code, "tag": item.tag, "name": item.name,
                      "current": item.code == lang.code} for item in self.ctx.catalogs.languages]
        html = self.env.get_template(template).render(
            _=lang.gettext, ngettext=lang.ngettext, lang=lang, languages=languages,
            station=self.ctx.config.station.id, path=request.url.path, **values)
        return HTMLResponse(html, status_code=status)

    def set_cookie(self, response: Response, name: str, value: str) -> None:
        response.set_cookie(name, value, httponly=True, samesite="strict",
                            secure=self.ctx.tls, path="/")

    def session(self, request: Request, *, touch: bool) -> Session | None:
        session = self.ctx.sessions.get(request.cookies.get(SESSION_COOKIE), touch=touch)
        return session if session is not None and session.kind == "it" else None

    async def form(self, request: Request) -> FormData | None:
        try:
            return await request.form(max_files=0, max_fields=8, max_part_size=4096)
        except (ClientDisconnect, ValueError, AssertionError):
            return None
        except Exception as exc:  # a malformed body: refuse it by name
            log.warning("web: malformed form refused: %s", type(exc).__name__)
            return None

    def refused(self, request: Request, lang: Language, status: int, text: str) -> HTMLResponse:
        return self.page("refused.html", request, lang, status=status, message=text)

    def log_action(self, kind: str, body: dict[str, Any]) -> None:
        with self.ctx.store.transaction() as tx:
            tx.log(kind, None, body)

    @staticmethod
    def address(request: Request) -> str:
        return request.client.host if request.client else ""

    def from_network(self, request: Request) -> bool:
        """A request from another machine: it sees nothing without an IT session."""
        web = self.ctx.config.web
        return (web is not None and not web.loopback
                and not is_loopback(self.address(request))
                and self.session(request, touch=False) is None)

    # --- the live figures -------------------------------------------------------------------

    def figures(self, kinds: set[str]) -> dict[str, Any]:
        ctx = self.ctx
        docks = dock_views(ctx.store, ctx.vault, ctx.progress)
        result: dict[str, Any] = {"docks": docks}
        if "it" in kinds:
            result["it"] = itview.figures(ctx.config, ctx.store, ctx.vault, ctx.progress, docks,
                                          officer_refusals=ctx.officer_refusals.snapshot()
                                          if ctx.officer_sign_in is not None else None,
                                          daemon=ctx.daemon() if ctx.daemon else None)
        return result

    def render(self, kind: str, code: str, figures: Mapping[str, Any]) -> dict[str, Any]:
        lang = self.ctx.catalogs.pick(code)
        if kind == "it":
            return itview.words(lang, figures["it"], "")
        return views.kiosk(lang, self.ctx.config.station.id, figures["docks"])

    def end_expired_sessions(self) -> None:
        for session in self.ctx.sessions.expire():
            try:
                self.log_action("web.signed_out", ended_body(session))
            except StoreError:
                log.exception("web: could not log the end of %s's session", session.user)

    def _stream(self, kind: str, lang: Language, session_id: str | None = None) -> Response:
        assert self.ctx.live is not None
        try:
            sub = self.ctx.live.subscribe(kind, lang.code, session_id)
        except TooManyStreams as exc:
            return Response(str(exc), status_code=503, media_type="text/plain")
        return StreamingResponse(self.ctx.live.stream(sub), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    # --- officer page -----------------------------------------------------------------------

    def anonymous_csrf(self, request: Request) -> tuple[str, str, bool]:
        """The browser's CSRF cookie (a new one if it has none), its form token, and whether
        the cookie is new (and must be set)."""
        cookie = request.cookies.get(CSRF_COOKIE)
        fresh = cookie is None or len(cookie) > 100
        if fresh:
            cookie = self.ctx.csrf.new_cookie()
        assert cookie is not None
        return cookie, self.ctx.csrf.anonymous_token(cookie), fresh

    async def kiosk(self, request: Request) -> Response:
        lang = self.lang(request)
        if self.from_network(request):
            return RedirectResponse(f"/it/signin?lang={lang.code}", status_code=303)
        web = self.ctx.config.web
        cookie, token, fresh = self.anonymous_csrf(request)
        response = self.page("kiosk.html", request, lang,
                             officer_sign_in=self.ctx.officer_sign_in is not None, csrf=token,
                             officer_timeout_s=web.officer_timeout_s if web else 0)
        if fresh:
            self.set_cookie(response, CSRF_COOKIE, cookie)
        return response

    async def kiosk_events(self, request: Request) -> Response:
        if self.from_network(request):
            return Response("sign in first", status_code=401, media_type="text/plain")
        return self._stream("kiosk", self.lang(request))

    # --- IT page ----------------------------------------------------------------------------

    async def it(self, request: Request) -> Response:
        lang = self.lang(request)
        session = self.session(request, touch=True)
        if session is None:
            return RedirectResponse(f"/it/signin?lang={lang.code}", status_code=303)
        notice = request.query_params.get("done")
        return self.page("it.html", request, lang, user=session.user, csrf=session.csrf,
                         notice=notice if notice in NOTICES else None)

    async def it_events(self, request: Request) -> Response:
        session = self.session(request, touch=False)
        if session is None:
            return Response("signed out", status_code=401, media_type="text/plain")
        return self._stream("it", self.lang(request), session.id)

    async def signin_form(self, request: Request, *, status: int = 200, error: str | None = None,
                          name: str = "") -> Response:
        lang = self.lang(request)
        cookie, token, fresh = self.anonymous_csrf(request)
        response = self.page("signin.html", request, lang, status=status, error=error,
                             name=name, csrf=token)
        if fresh:
            self.set_cookie(response, CSRF_COOKIE, cookie)
        return response

    async def signin(self, request: Request) -> Response:
        lang = self.lang(request)
        _ = lang.gettext
        form = await self.form(request)
        cookie = request.cookies.get(CSRF_COOKIE)
        if (form is None or cookie is None or not same_origin(request)
                or not token_ok(form.get(CSRF_FIELD), self.ctx.csrf.anonymous_token(cookie))):
            return self.refused(request, lang, 403, _("This form is out of date or did not "
                                                      "come from this station. Reload the page "
                                                      "and try again."))
        name = str(form.get("name", ""))[:64]
        password = str(form.get("password", ""))
        address = self.address(request)
        keys = [f"user:{name}", f"address:{address}"]
        wait = self.ctx.limiter.retry_after(keys)
        if wait > 0:
            minutes = max(1, round(wait / 60))
            return await self.signin_form(request, status=429, name=name, error=lang.ngettext(
                "Too many failed sign-ins. Try again in %(n)d minute.",
                "Too many failed sign-ins. Try again in %(n)d minutes.", minutes) % {"n": minutes})
        try:
            ok = await run_in_threadpool(self.ctx.accounts.verify, name, password)
        except AccountError as exc:
            log.error("web: IT sign-in impossible: %s", exc.diagnostics())
            return await self.signin_form(request, status=503, name=name, error=_(
                "IT accounts are not set up on this station (see the station's log)."))
        if not ok:
            self.ctx.limiter.failed(keys)
            log.warning("web: failed IT sign-in for %r from %s", name, address)
            return await self.signin_form(request, status=401, name=name,
                                          error=_("Wrong name or password."))
        self.ctx.limiter.succeeded(keys[:1])
        session = self.ctx.sessions.create("it", name, address)
        await run_in_threadpool(self.log_action, "web.signed_in",
                                {"user": name, "role": "it", "address": address})
        response = RedirectResponse(f"/it?lang={lang.code}", status_code=303)
        self.set_cookie(response, SESSION_COOKIE, session.id)
        return response

    async def _signed_in_form(self, request: Request, lang: Language
                              ) -> tuple[Session, FormData] | Response:
        """The session and form of an IT action, or the response refusing it."""
        session = self.session(request, touch=True)
        form = await self.form(request)
        if (session is None or form is None or not same_origin(request)
                or not token_ok(form.get(CSRF_FIELD), session.csrf)):
            log.warning("web: IT action refused (session, CSRF token or origin) from %s",
                        self.address(request))
            return self.refused(request, lang, 403, lang.gettext(
                "This form is out of date or did not come from this station. Reload the page "
                "and try again."))
        return session, form

    async def signout(self, request: Request) -> Response:
        lang = self.lang(request)
        checked = await self._signed_in_form(request, lang)
        if isinstance(checked, Response):
            return checked
        session, _form = checked
        self.ctx.sessions.end(session.id)
        await run_in_threadpool(self.log_action, "web.signed_out",
                                {"user": session.user, "role": "it", "reason": "signed_out"})
        response = RedirectResponse(f"/it/signin?lang={lang.code}", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def requeue(self, request: Request) -> Response:
        lang = self.lang(request)
        checked = await self._signed_in_form(request, lang)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        clip_id = str(form.get("clip_id", ""))
        note = str(form.get("note", "")).strip()[:200] or None
        exists = CLIP_ID.fullmatch(clip_id) is not None and await run_in_threadpool(
            self.ctx.store.query_one, "SELECT 1 FROM clips WHERE clip_id = ?", (clip_id,)
        ) is not None
        if not exists:
            return self.refused(request, lang, 404, lang.gettext("No such clip."))
        try:
            await run_in_threadpool(requeue_clip, self.ctx.store, clip_id,
                                    by=f"it:{session.user}", note=note)
        except RequeueRefused as exc:
            return self.refused(request, lang, 409, str(exc))
        except AgentError as exc:
            return self.refused(request, lang, 500, exc.diagnostics())
        return RedirectResponse(f"/it?lang={lang.code}&done=requeued", status_code=303)
