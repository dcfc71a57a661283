"""IT accounts, message catalogs and the layout a catalog asks for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir

from agent.config import Config
from agent.errors import ConfigError
from agent.web import accounts as accounts_mod
from agent.web.accounts import AccountError, Accounts
from agent.web.i18n import Catalogs, compile_catalog, shipped_locale_dir

WEB = Path(accounts_mod.__file__).parent
FIXTURES = Path(__file__).parent / "fixtures" / "locale"
REPO = Path(__file__).resolve().parents[2]


# --- accounts ------------------------------------------------------------------------------

def test_accounts_keep_scrypt_hashes_only_in_a_private_file(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "users.json")
    accounts.add("alice", "correct horse battery")
    raw = (tmp_path / "users.json").read_text()
    assert "correct horse" not in raw
    entry = json.loads(raw)["users"]["alice"]
    n, r, p, _salt, _hash = entry["scrypt"].split("$")
    assert (int(n), int(r), int(p)) == (2**15, 8, 1)
    assert os.stat(tmp_path / "users.json").st_mode & 0o777 == 0o600
    assert accounts.verify("alice", "correct horse battery")
    assert not accounts.verify("alice", "correct horse batterY")
    assert not accounts.verify("bob", "correct horse battery")
    with pytest.raises(AccountError, match="exists"):
        accounts.add("alice", "another password")
    with pytest.raises(AccountError, match="too short"):
        accounts.add("bob", "short")
    with pytest.raises(AccountError, match="not allowed"):
        accounts.add("../bob", "long enough password")
    os.chmod(tmp_path / "users.json", 0o644)
    with pytest.raises(AccountError, match="chmod 600"):
        accounts.verify("alice", "correct horse battery")


def test_web_user_commands_read_the_password_from_stdin(
        station_config: Callable[..., Config], tmp_path: Path) -> None:
    config = station_config()
    assert config.source is not None
    cli = [sys.executable, "-m", "agent.cli.main", "web", "user"]
    added = subprocess.run([*cli, "add", "alice", "--config", str(config.source)],
                           input="correct horse battery\n", capture_output=True, text=True,
                           cwd=REPO, timeout=60)
    assert added.returncode == 0, added.stderr
    assert "correct horse" not in added.stdout + added.stderr
    listed = subprocess.run([*cli, "list", "--config", str(config.source)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert listed.stdout.split() == ["alice"]
    accounts = Accounts(config.data_dir / "web-users.json")
    assert accounts.verify("alice", "correct horse battery")
    unknown = subprocess.run([*cli, "passwd", "bob", "--config", str(config.source)],
                             input="another long password\n", capture_output=True, text=True,
                             cwd=REPO, timeout=60)
    assert unknown.returncode == 2 and "no account 'bob'" in unknown.stderr
    removed = subprocess.run([*cli, "remove", "alice", "--config", str(config.source)],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
    assert removed.returncode == 0
    assert not accounts.verify("alice", "correct horse battery")


# --- catalogs ------------------------------------------------------------------------------

def _source_messages() -> set[tuple[str | None, str]]:
    method_map = [("**/templates/**.html", "jinja2"), ("**.py", "python")]
    found = set()
    for _file, _line, message, _comments, context in extract_from_dir(
            str(WEB), method_map, keywords={"_": None, "gettext": None,
                                            "ngettext": (1, 2), "pgettext": ((1, "c"), 2)}):
        found.add((context, message if isinstance(message, str) else message[0]))
    return found


@pytest.mark.parametrize("code", ["zh_Hans_CN", "en"])
def test_every_word_of_the_pages_is_in_every_shipped_catalog(code: str) -> None:
    from babel.messages.pofile import read_po

    path = shipped_locale_dir() / code / "LC_MESSAGES" / "messages.po"
    with open(path, "rb") as f:
        catalog = read_po(f, locale=code)
    translated = {}
    for message in catalog:
        if not message.id:
            continue
        key = (message.context, message.id if isinstance(message.id, str) else message.id[0])
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        translated[key] = all(strings) and not message.fuzzy
    needed = _source_messages()
    assert len(needed) > 80
    assert needed - set(translated) == set(), "words missing from the catalog"
    assert set(translated) - needed == set(), "words the pages no longer use"
    assert [k for k, ok in translated.items() if not ok] == []


def test_chinese_is_the_default_and_plurals_follow_the_catalog() -> None:
    catalogs = Catalogs(["zh_Hans_CN", "en"])
    zh, en = catalogs.default, catalogs.pick("en")
    assert (zh.tag, zh.name, zh.writing_mode) == ("zh-Hans-CN", "中文", "horizontal-tb")
    assert zh.ngettext("%(n)d camera docked", "%(n)d cameras docked", 3) % {"n": 3} == \
        "已插入 3 台记录仪"
    assert en.ngettext("%(n)d camera docked", "%(n)d cameras docked", 1) % {"n": 1} == \
        "1 camera docked"
    assert en.ngettext("%(n)d camera docked", "%(n)d cameras docked", 2) % {"n": 2} == \
        "2 cameras docked"
    assert catalogs.pick("nope") is zh


def test_a_vertical_language_is_added_by_a_catalog_alone() -> None:
    catalogs = Catalogs(["zh_Hans_CN", "en", "mn_Mong"], FIXTURES)
    mongolian = catalogs.pick("mn_Mong")
    assert (mongolian.tag, mongolian.writing_mode) == ("mn-Mong", "vertical-lr")
    assert mongolian.name == "ᠮᠣᠩᠭᠣᠯ"
    assert mongolian.gettext("Camera dock") == "ᠬᠠᠷᠠᠭᠤᠯ ᠤᠨ ᠪᠠᠭᠠᠵᠢ"


def test_a_missing_or_broken_catalog_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"web\.languages: no catalog fr/LC_MESSAGES"):
        Catalogs(["fr"])
    broken = tmp_path / "xx" / "LC_MESSAGES" / "messages.po"
    broken.parent.mkdir(parents=True)
    broken.write_text('garbage\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="not a valid catalog"):
        compile_catalog(broken, "en")
    broken.write_text('#, python-format\nmsgid "%(n)d left"\nmsgstr "%(m)d left"\n',
                      encoding="utf-8")
    with pytest.raises(ConfigError, match="do not fit") as info:
        compile_catalog(broken, "en")
    assert "%(n)d left" in info.value.diagnostics()
