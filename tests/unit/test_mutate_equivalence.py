"""scripts/mutate's rules for mutants that change nothing (tests/mutation/equivalent.toml).

A rule that excused too much would hide a real survivor from the kill rate, so each
is tried on mutants it must excuse and on look-alikes it must not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.mutate_main import Equivalents, Survivor, equivalent_reason, load_equivalent, verdicts


def _survivor(before: str, after: str, file: str = "agent/sync/retention.py") -> Survivor:
    return Survivor("m", "survived", file, "", (before,), (after,))


@pytest.mark.parametrize(("before", "after", "excused"), [
    # SQL keywords and names change case: the same statement for SQLite.
    ('row = tx.one("SELECT * FROM clips WHERE clip_id = ?", (claimed,))',
     'row = tx.one("select * from clips where clip_id = ?", (claimed,))', True),
    ('"release_retry_at <= ? LIMIT 1", (serial, current)) is not None',
     '"RELEASE_RETRY_AT <= ? LIMIT 1", (serial, current)) is not None', True),
    ('"(duplicate_of = ? AND state = \'duplicate\' AND released_at IS NULL) "',
     '"(duplicate_of = ? and state = \'duplicate\' and released_at is null) "', True),
    ('"WHERE manifest IS NOT NULL) AS n")', '"where manifest is not null) as n")', True),
    ('"VALUES (?,?,?)", (command_id, now(), rfc3339(expires)))',
     '"values (?,?,?)", (command_id, now(), rfc3339(expires)))', True),
    # A quoted SQL value is data: its case matters.
    ('"(duplicate_of = ? AND state = \'duplicate\' AND released_at IS NULL) "',
     '"(DUPLICATE_OF = ? AND STATE = \'DUPLICATE\' AND RELEASED_AT IS NULL) "', False),
    # Words a person reads, event names, one capital word: not SQL.
    ('raise Refused("state", "not uploaded")', 'raise Refused("state", "NOT UPLOADED")', False),
    ('tx.event("clip.uploaded", body)', 'tx.event("CLIP.UPLOADED", body)', False),
    ('message = "the camera: AND then"', 'message = "the camera: and then"', False),
    # Something outside the literal changed too.
    ('q("SELECT 1 FROM clips WHERE a = ?", x)', 'q("select 1 from clips where a = ?", y)',
     False),
])
def test_only_a_change_of_case_in_sql_outside_its_values_is_excused(
        before: str, after: str, excused: bool) -> None:
    """Rule: a mutant changing the case of SQL keywords or names is equivalent; one changing
    a quoted value, a message or anything else is a survivor."""
    reason = equivalent_reason(_survivor(before, after), Equivalents([], []))
    assert (reason is not None) == excused, reason


def test_a_row_column_rule_excuses_only_the_rows_and_files_it_names() -> None:
    """Rule: row["STATE"] for a listed sqlite3.Row name in a listed file is excused; a dict
    (payload["STATE"]) or another file is not."""
    rules = Equivalents([], [{"files": ["agent/sync/inbound.py"], "names": ["row"],
                              "reason": "case-insensitive"}])
    row = _survivor('state = ClipState(row["state"])', 'state = ClipState(row["STATE"])',
                    "agent/sync/inbound.py")
    payload = _survivor('x = payload["station_id"]', 'x = payload["STATION_ID"]',
                        "agent/sync/inbound.py")
    elsewhere = _survivor('state = ClipState(row["state"])', 'state = ClipState(row["STATE"])',
                          "agent/vault.py")
    assert equivalent_reason(row, rules) == "case-insensitive"
    assert equivalent_reason(payload, rules) is None
    assert equivalent_reason(elsewhere, rules) is None


def test_every_listed_equivalent_mutant_gives_its_file_its_lines_and_a_reason() -> None:
    """Rule: tests/mutation/equivalent.toml loads, and each entry says why."""
    known = load_equivalent()
    assert known.entries and known.row_rules
    for entry in known.entries:
        assert entry["removed"].strip() and entry["added"].strip(), entry
        assert entry["removed"].strip() != entry["added"].strip(), entry
        assert len(entry["reason"]) > 20, entry


def test_a_rerun_of_survivors_keeps_the_last_runs_verdicts_for_the_others() -> None:
    """Rule: `scripts/mutate --again` counts only the survivors it ran again from mutmut's
    listing; mutmut resets every other verdict to 'not checked' when the module's test list
    changed, and those keep the last run's (killed stays killed, equivalent stays listed)."""
    listing = "\n".join([
        "    agent.vault.x_put__mutmut_1: not checked",   # killed in the last run
        "    agent.vault.x_put__mutmut_2: killed",        # a survivor the new test kills
        "    agent.vault.x_put__mutmut_3: survived",      # a survivor still alive
        "    agent.vault.x_put__mutmut_4: not checked",   # listed equivalent last time
        "some line mutmut prints without a verdict",
    ])
    rerun = {"agent.vault.x_put__mutmut_2", "agent.vault.x_put__mutmut_3"}
    assert verdicts(listing, rerun, {"agent.vault.x_put__mutmut_4"}) == [
        ("agent.vault.x_put__mutmut_1", "killed"),
        ("agent.vault.x_put__mutmut_2", "killed"),
        ("agent.vault.x_put__mutmut_3", "survived"),
        ("agent.vault.x_put__mutmut_4", "survived"),
    ]
    # A full run takes mutmut's word for every mutant, 'not checked' included.
    assert verdicts(listing, None, set())[0] == ("agent.vault.x_put__mutmut_1", "not checked")


def test_a_rerun_that_could_not_run_keeps_the_last_complete_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: `scripts/mutate --again` that could not run its survivors (its tests failed
    without any mutant) leaves the module's last complete result in place, so the rerun
    can be tried again once the tests are fixed; a finished rerun replaces it."""
    import json

    import scripts.mutate_main as mutate

    monkeypatch.setattr(mutate, "RUN_DIR", tmp_path)
    (tmp_path / "verify").mkdir()
    last = {"module": "verify", "finished": True, "surviving": ["m1"], "killed": 9}
    (tmp_path / "verify" / "result.json").write_text(json.dumps(last))
    failed = mutate.Result("verify", total=10, caught=9, finished=False, not_checked=1,
                           again=True)
    assert not mutate.report([failed], 90.0)
    assert json.loads((tmp_path / "verify" / "result.json").read_text()) == last
    done = mutate.Result("verify", total=10, caught=10, again=True)
    assert mutate.report([done], 90.0)
    kept = json.loads((tmp_path / "verify" / "result.json").read_text())
    assert (kept["killed"], kept["surviving"], kept["finished"]) == (10, [], True)
