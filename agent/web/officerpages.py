"""The officer's routes on the station screen: sign in by card, list their clips, act on them.

Routes (JSON answers for the officer page's script; 404 on a station that
checks no officer credentials; 403 to any browser but the station's own):

    GET  /officer/session    who is signed in (counts as activity)
    POST /officer/signin     card [, officer number]      (CSRF: the page's cookie token)
    POST /officer/signout                                  (CSRF: the session's token)
    GET  /officer/clips      the officer's recent clips and case numbers to pick from
    GET  /officer/thumbnail/<clip id>   the first picture of a clip of the officer's (JPEG)
    POST /officer/tag        clip_id, case_id              (CSRF: the session's token)
    POST /officer/untag      clip_id, case_id
    POST /officer/important  clip_id

Invariants: every POST checks its token and Origin before anything else; a
refused POST or sign-in changes nothing and writes nothing to the custody
log (refused sign-ins are counted in memory: agent.web.officers.Refusals);
every action re-checks the credential against the roster held now and is
one custody log entry naming it (agent.officers.station), as are each
sign-in and sign-out; nothing here deletes or plays evidence.  The only
picture served is a clip's thumbnail (agent/thumbnails.py, not evidence),
to the officer who recorded the clip or a supervisor; no route reads the
vault.
"""

from __future__ import annotations

import logging
import unicodedata
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agent.config import is_loopback
from agent.errors import StoreError
from agent.officers import station as officer_station
from agent.officers.credentials import Credential
from agent.tagging import TagError
from agent.thumbnails import Thumbnails
from agent.web import officerview, pictures
from agent.web.i18n import Language
from agent.web.officers import OFFICER_COOKIE, OfficerSignIn
from agent.web.security import CLIP_ID, CSRF_COOKIE, CSRF_FIELD, same_origin, token_ok
from agent.web.sessions import Session

if TYPE_CHECKING:
    from agent.web.app import Pages

log = logging.getLogger(__name__)

KIND = "officer"
OFFICER_LIMIT_KEY = "officer:"


def ended_body(session: Session, reason: str | None = None) -> dict[str, Any]:
    """The body of the ``web.signed_out`` entry for ``session``."""
    body: dict[str, Any] = {"user": session.user, "role": session.kind,
                            "reason": reason or session.ended_reason}
    if session.credential_id is not None:
        body["credential_id"] = session.credential_id
    return body


class OfficerPages:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.ctx = pages.ctx
        self.thumbnails = Thumbnails(self.ctx.config.data_dir)

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def answer(status: int = 200, **values: Any) -> JSONResponse:
        return JSONResponse(values, status_code=status)

    def gate(self, request: Request, lang: Language
             ) -> tuple[OfficerSignIn | None, Response | None]:
        """The sign-in object, or the response refusing an officer route outright."""
        if self.ctx.officer_sign_in is None:
            return None, self.answer(404, error=lang.gettext(
                "Officer sign-in is not available on this station."))
        if not is_loopback(self.pages.address(request)):
            return None, self.answer(403, error=lang.gettext(
                "Officers sign in at the station's own screen only."))
        return self.ctx.officer_sign_in, None

    def session(self, request: Request, *, touch: bool) -> Session | None:
        session = self.ctx.sessions.get(request.cookies.get(OFFICER_COOKIE), touch=touch)
        return session if session is not None and session.kind == KIND else None

    def out_of_date(self, lang: Language) -> JSONResponse:
        return self.answer(403, error=lang.gettext(
            "This form is out of date or did not come from this station. Reload the page and "
            "try again."))

    def signed_out(self, lang: Language, message: str | None = None) -> JSONResponse:
        response = self.answer(401, signed_out=True, error=message or lang.gettext(
            "You are signed out. Swipe your card to sign in again."))
        response.delete_cookie(OFFICER_COOKIE, path="/")
        return response

    async def end(self, session: Session, reason: str) -> None:
        """End ``session`` now and log it (a session that had ended by itself is logged by the
        page server's housekeeping instead)."""
        if self.ctx.sessions.end(session.id, reason) is not None:
            await run_in_threadpool(self.pages.log_action, "web.signed_out",
                                    ended_body(session, reason))

    def session_values(self, lang: Language, session: Session,
                       credential: Credential) -> dict[str, Any]:
        return {"signed_in": True, "officer": officerview.identity(lang, credential),
                "csrf": session.csrf, "timeout_s": self.ctx.config.web.officer_timeout_s
                if self.ctx.config.web else 0,
                "remaining_s": round(self.ctx.sessions.remaining(session))}

    async def current(self, session: Session, lang: Language,
                      sign_in: OfficerSignIn) -> Credential | JSONResponse:
        """The session's credential if still valid now; else the session ends (logged)."""
        assert session.credential_id is not None
        try:
            return await run_in_threadpool(sign_in.current, session.credential_id)
        except officer_station.NotPermitted as exc:
            log.warning("web: officer %s signed out: %s", session.user, exc)
            await self.end(session, "credential_invalid")
            return self.signed_out(lang, lang.gettext(
                "Your credential is no longer valid at this station; you are signed out."))

    # --- sign-in and the session ------------------------------------------------------------

    async def session_info(self, request: Request) -> Response:
        """Who is signed in; ``?active=1`` when the officer used the screen (a tap, a key),
        which counts as activity, as every action does; the page's own checks do not."""
        lang = self.pages.lang(request)
        sign_in, refused = self.gate(request, lang)
        if refused is not None:
            return refused
        assert sign_in is not None
        session = self.session(request, touch=request.query_params.get("active") == "1")
        if session is None:
            return self.answer(signed_in=False)
        credential = await self.current(session, lang, sign_in)
        if isinstance(credential, Response):
            return credential
        return self.answer(**self.session_values(lang, session, credential))

    async def signin(self, request: Request) -> Response:
        lang = self.pages.lang(request)
        sign_in, refused = self.gate(request, lang)
        if refused is not None:
            return refused
        assert sign_in is not None and self.ctx.config.web is not None
        form = await self.pages.form(request)
        cookie = request.cookies.get(CSRF_COOKIE)
        if (form is None or cookie is None or not same_origin(request)
                or not token_ok(form.get(CSRF_FIELD), self.ctx.csrf.anonymous_token(cookie))):
            return self.out_of_date(lang)
        card = str(form.get("card", "")).strip()[:128]
        number = str(form.get("officer_number", "")).strip()[:64] or None
        previous = self.session(request, touch=False)
        address = self.pages.address(request)
        keys = [f"kiosk:{address}"] + ([OFFICER_LIMIT_KEY + number] if number else [])
        limiter = self.ctx.officer_limiter
        wait = limiter.retry_after(keys)
        if wait > 0:
            if previous is not None:
                await self.end(previous, "another_card")
            self.ctx.officer_refusals.count("limited")
            seconds = max(1, round(wait))
            return self.answer(429, error=lang.ngettext(
                "Too many refused sign-ins. Try again in %(n)d second.",
                "Too many refused sign-ins. Try again in %(n)d seconds.", seconds)
                % {"n": seconds}, signed_out=previous is not None)
        try:
            credential = await run_in_threadpool(sign_in.authenticate, card, number)
        except officer_station.SignInRefused as exc:
            limiter.failed(keys)
            self.ctx.officer_refusals.count(exc.reason)
            log.warning("web: officer sign-in refused at the screen: %s", exc.reason)
            if previous is not None:  # someone else is at the screen now
                await self.end(previous, "another_card")
            response = self.answer(401, signed_out=previous is not None,
                                   error=officerview.refusal(lang, exc.reason, exc.credential,
                                                             with_number=number is not None))
            if previous is not None:
                response.delete_cookie(OFFICER_COOKIE, path="/")
            return response
        limiter.succeeded(keys[1:])  # never the screen's own count: one card cannot reset it
        if previous is not None and previous.credential_id == credential.credential_id:
            self.ctx.sessions.get(previous.id, touch=True)
            return self.answer(**self.session_values(lang, previous, credential))
        for other in self.ctx.sessions.end_kind(KIND, "another_card"):
            await run_in_threadpool(self.pages.log_action, "web.signed_out", ended_body(other))
        session = self.ctx.sessions.create(KIND, credential.officer_id, address,
                                           timeout_s=self.ctx.config.web.officer_timeout_s,
                                           credential_id=credential.credential_id)
        await run_in_threadpool(self.pages.log_action, "web.signed_in", {
            "user": credential.officer_id, "role": KIND,
            "credential_id": credential.credential_id,
            "method": "officer-number+card" if number else "card", "address": address})
        response = self.answer(**self.session_values(lang, session, credential))
        self.pages.set_cookie(response, OFFICER_COOKIE, session.id)
        return response

    async def acting(self, request: Request, lang: Language
                     ) -> tuple[Session, Credential, FormData] | Response:
        """The session, valid credential and form of an officer's POST, or the refusal."""
        sign_in, refused = self.gate(request, lang)
        if refused is not None:
            return refused
        assert sign_in is not None
        session = self.session(request, touch=True)
        form = await self.pages.form(request)
        if session is None:
            return self.signed_out(lang)
        if form is None or not same_origin(request) or not token_ok(form.get(CSRF_FIELD),
                                                                    session.csrf):
            log.warning("web: officer action refused (CSRF token or origin) from %s",
                        self.pages.address(request))
            return self.out_of_date(lang)
        credential = await self.current(session, lang, sign_in)
        if isinstance(credential, Response):
            return credential
        return session, credential, form

    async def signout(self, request: Request) -> Response:
        lang = self.pages.lang(request)
        checked = await self.acting(request, lang)
        if isinstance(checked, Response):
            return checked
        session, _credential, _form = checked
        await self.end(session, "signed_out")
        response = self.answer(signed_in=False)
        response.delete_cookie(OFFICER_COOKIE, path="/")
        return response

    # --- the officer's clips ----------------------------------------------------------------

    async def clips(self, request: Request) -> Response:
        lang = self.pages.lang(request)
        sign_in, refused = self.gate(request, lang)
        if refused is not None:
            return refused
        assert sign_in is not None
        session = self.session(request, touch=True)
        if session is None:
            return self.signed_out(lang)
        credential = await self.current(session, lang, sign_in)
        if isinstance(credential, Response):
            return credential
        serial = request.query_params.get("serial") or None
        if serial is not None and (len(serial) > 64 or any(
                unicodedata.category(c).startswith("C") for c in serial)):
            return self.answer(400, error=lang.gettext("No such camera."))

        def read() -> tuple[list[dict[str, Any]], list[str], dict[str, str]]:
            store = self.ctx.store
            rows = officer_station.recent_clips(store, credential, serial=serial)
            return (rows, officer_station.case_choices(store, credential),
                    pictures.kinds(store, self.thumbnails, [r["clip_id"] for r in rows]))

        rows, choices, kinds = await run_in_threadpool(read)
        return self.answer(**officerview.clips(lang, credential, rows, choices, serial, kinds))

    async def thumbnail(self, request: Request) -> Response:
        """The clip's thumbnail, to the officer who recorded it or a supervisor.

        Loading it is the page's doing, not the officer's: it does not count as
        activity.  Never anything of the vault: only the thumbnail file, checked
        again to be one small JPEG before it is sent.
        """
        lang = self.pages.lang(request)
        _ = lang.gettext
        sign_in, refused = self.gate(request, lang)
        if refused is not None:
            return refused
        assert sign_in is not None
        session = self.session(request, touch=False)
        if session is None:
            return self.signed_out(lang)
        credential = await self.current(session, lang, sign_in)
        if isinstance(credential, Response):
            return credential
        clip_id = str(request.path_params.get("clip_id", ""))
        clip = await run_in_threadpool(
            self.ctx.store.query_one, "SELECT officer_id FROM clips WHERE clip_id = ?",
            (clip_id,)) if CLIP_ID.fullmatch(clip_id) else None
        if clip is None:
            return self.answer(404, error=_("No such recording."))
        if clip["officer_id"] != credential.officer_id and \
                not officer_station.may_act_on_all(credential):
            log.warning("web: officer %s refused the picture of clip %s (not theirs)",
                        credential.officer_id, clip_id)
            return self.answer(403, error=_("This recording is not yours: only the officer "
                                            "who recorded it, or a supervisor, may see it."))
        data = await run_in_threadpool(self.thumbnails.read, clip_id)
        if data is None:
            return self.answer(404, error=_("This recording has no picture."))
        return Response(data, media_type="image/jpeg")

    async def _clip(self, form: FormData) -> Any:
        clip_id = str(form.get("clip_id", ""))
        if CLIP_ID.fullmatch(clip_id) is None:
            return None
        return await run_in_threadpool(self.ctx.store.query_one,
                                       "SELECT clip_id, name FROM clips WHERE clip_id = ?",
                                       (clip_id,))

    def not_permitted(self, lang: Language, exc: officer_station.NotPermitted) -> JSONResponse:
        _ = lang.gettext
        if exc.code == "not-own-clip":
            return self.answer(403, error=_("This recording is not yours: only the officer who "
                                            "recorded it, or a supervisor, may change it."))
        if exc.code == "not-own-tag":
            return self.answer(403, error=_("Only the officer who added this case number at the "
                                            "station, or a supervisor, may remove it."))
        if exc.code == "not-sealed":
            return self.answer(409, error=_("This recording is not sealed yet. Try again when "
                                            "its camera is safe to undock."))
        return self.answer(403, error=_("You may not do this."))

    async def act(self, request: Request, action: str) -> Response:
        lang = self.pages.lang(request)
        _ = lang.gettext
        checked = await self.acting(request, lang)
        if isinstance(checked, Response):
            return checked
        _session, credential, form = checked
        clip = await self._clip(form)
        if clip is None:
            return self.answer(404, error=_("No such recording."))
        clip_id, name = clip["clip_id"], clip["name"]
        case_id = str(form.get("case_id", "")).strip()
        store, config = self.ctx.store, self.ctx.config
        try:
            if action == "important":
                body = await run_in_threadpool(officer_station.mark_important, store,
                                               credential, clip_id)
                message = (_("%(name)s is marked important; it is uploaded first.")
                           if body is not None else
                           _("%(name)s was marked important already.")) % {"name": name}
            elif action == "tag":
                if not case_id:
                    return self.answer(400, error=_("Enter a case number."))
                body = await run_in_threadpool(officer_station.tag, store, config, credential,
                                               clip_id, case_id)
                message = (_("Case %(case)s added to %(name)s.") if body is not None else
                           _("%(name)s is in case %(case)s already.")) % {"case": case_id,
                                                                         "name": name}
            else:
                await run_in_threadpool(officer_station.tag, store, config, credential,
                                        clip_id, case_id, remove=True)
                message = _("Case %(case)s removed from %(name)s.") % {"case": case_id,
                                                                        "name": name}
        except officer_station.NotPermitted as exc:
            log.warning("web: officer %s refused: %s", credential.officer_id, exc)
            return self.not_permitted(lang, exc)
        except TagError:
            if action == "tag":
                return self.answer(400, error=_(
                    "“%(case)s” is not a case number this station accepts. Check it against "
                    "the case file, or pick one from the list.") % {"case": case_id[:140]})
            return self.answer(409, error=_("%(name)s is not in case %(case)s.")
                               % {"case": case_id[:140], "name": name})
        except StoreError as exc:
            log.error("web: officer action failed: %s", exc.diagnostics())
            return self.answer(500, error=_("The station could not record this. Call IT."))
        return self.answer(message=message)

    async def tag(self, request: Request) -> Response:
        return await self.act(request, "tag")

    async def untag(self, request: Request) -> Response:
        return await self.act(request, "untag")

    async def important(self, request: Request) -> Response:
        return await self.act(request, "important")
