"""Message catalogs of the pages: gettext .po files, compiled in memory with Babel at start.

Every word the pages show comes from ``<language>/LC_MESSAGES/messages.po``
(source strings in English).  A language is added by adding a catalog, in
``agent/web/locale`` or in the station's ``web.locale_dir``, and naming it in
``web.languages``: no code changes.  Plural forms follow the catalog's
``Plural-Forms`` header (``ngettext``).

A catalog also says how its language is laid out, as two translations with
the context ``layout``: ``"English"`` is the language's own name (shown on the
language switch) and ``"horizontal-tb"`` its CSS writing mode
(``vertical-lr`` for traditional Mongolian script).  A catalog that leaves the
writing mode untranslated gets the one CLDR gives for its script.
"""

from __future__ import annotations

import gettext
import importlib.resources
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.messages.mofile import write_mo
from babel.messages.pofile import PoFileError, read_po

from agent.errors import ConfigError

DOMAIN = "messages"
WRITING_MODES = ("horizontal-tb", "vertical-lr", "vertical-rl")
MAX_CATALOG_BYTES = 1024 * 1024


def shipped_locale_dir() -> Path:
    return Path(str(importlib.resources.files("agent.web") / "locale"))


@dataclass(frozen=True)
class Language:
    code: str  # catalog name: zh_Hans_CN
    tag: str  # BCP 47 tag for lang="": zh-Hans-CN
    name: str  # the language's own name
    writing_mode: str  # CSS writing-mode of the page
    translations: gettext.GNUTranslations

    def gettext(self, message: str) -> str:
        return self.translations.gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self.translations.ngettext(singular, plural, n)

    def pgettext(self, context: str, message: str) -> str:
        return self.translations.pgettext(context, message)


def compile_catalog(path: Path, code: str) -> gettext.GNUTranslations:
    """Read a .po file and compile it to a GNUTranslations object (fuzzy entries left out)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"web.languages: cannot read the catalog {path}: {exc.strerror}") \
            from exc
    if len(data) > MAX_CATALOG_BYTES:
        raise ConfigError(f"web.languages: {path} is larger than {MAX_CATALOG_BYTES} bytes")
    try:
        catalog = read_po(io.BytesIO(data), locale=code, abort_invalid=True)
    except (PoFileError, ValueError, UnknownLocaleError) as exc:
        raise ConfigError(f"web.languages: {path} is not a valid catalog: {exc}") from exc
    # A translation whose placeholders differ from the source would fail on the page.
    problems = [f"{message.id!r}: {'; '.join(str(e) for e in errors)}"
                for message, errors in catalog.check()]
    if problems:
        raise ConfigError(f"web.languages: {path} has translations that do not fit their "
                          "source text", problems)
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


def _writing_mode(translations: gettext.GNUTranslations, code: str) -> str:
    mode = translations.pgettext("layout", "horizontal-tb")
    if mode in WRITING_MODES and mode != "horizontal-tb":
        return mode
    try:
        direction = Locale.parse(code).text_direction
    except (ValueError, UnknownLocaleError):
        direction = "ltr"
    return "vertical-lr" if direction == "ttb" else "horizontal-tb"


def load_language(code: str, search: Sequence[Path]) -> Language:
    for directory in search:
        path = directory / code / "LC_MESSAGES" / f"{DOMAIN}.po"
        if path.is_file():
            break
    else:
        where = ", ".join(str(d) for d in search)
        raise ConfigError(f"web.languages: no catalog {code}/LC_MESSAGES/{DOMAIN}.po in {where}")
    translations = compile_catalog(path, code)
    name = translations.pgettext("layout", "English")
    return Language(code=code, tag=code.replace("_", "-"), name=name,
                    writing_mode=_writing_mode(translations, code), translations=translations)


class Catalogs:
    """The languages a station's pages offer, the first being the default."""

    def __init__(self, codes: Sequence[str], extra_dir: Path | None = None) -> None:
        search = [d for d in (extra_dir, shipped_locale_dir()) if d is not None]
        self.languages = [load_language(code, search) for code in codes]
        self.by_code = {lang.code: lang for lang in self.languages}
        self.default = self.languages[0]

    def pick(self, code: str | None) -> Language:
        """The language named by ``code`` if offered, else the default."""
        if code is None:
            return self.default
        return self.by_code.get(code, self.default)
