"""scripts/mutate: mutation testing of the code that guards evidence, module by module.

Each module of tests/mutation/modules.toml is mutated with mutmut 3 in a copy of the
tree under ``mutation-run/<module>/`` (mutmut writes its mutants/ there, never into the
working tree), against that module's fast tests only.  Every mutant is one small change
(an operator, a constant, a dropped argument, a removed call); it is *killed* when a test
fails, *survives* when every test still passes.  A survivor is either a missing assertion
or, after a person has shown it, an equivalent mutant: tests/mutation/equivalent.toml lists
those, each with its reason, and they are left out of the kill rate.

Output: per module the mutants, killed, equivalent, surviving, the kill rate of the
non-equivalent ones and the minutes taken; then every survivor with its diff.  The summary
goes to mutation-run/summary.json too.  ``--again`` reruns only the survivors of each
module's last run against the tests as they are now (after tests were added to kill them),
if the code is the same.  Exit status 1 if a module is under ``--min-rate``
(90 %) or did not finish within ``--timeout-min``.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "tests" / "mutation" / "modules.toml"
EQUIVALENT = ROOT / "tests" / "mutation" / "equivalent.toml"
RUN_DIR = ROOT / "mutation-run"

# Logging calls are not evidence: their wording is for people reading the journal.
NOT_MUTATED = [r"^\s*log\.(debug|info|warning|error|exception)\("]
# What a mutant ends as (mutmut's words) that counts as caught by the tests.
CAUGHT = {"killed", "timeout", "segfault", "caught by type check"}


@dataclass
class Survivor:
    name: str
    status: str
    file: str
    diff: str
    removed: tuple[str, ...]
    added: tuple[str, ...]
    equivalent: str | None = None


@dataclass
class Result:
    module: str
    total: int = 0
    caught: int = 0
    minutes: float = 0.0
    finished: bool = True
    not_checked: int = 0
    source: str = ""  # source_digest() of the code mutated
    rerun_minutes: float = 0.0  # of ``minutes``, those spent rerunning survivors (--again)
    again: bool = False  # a rerun of the last run's survivors (--again)
    survivors: list[Survivor] = field(default_factory=list)

    @property
    def equivalent(self) -> list[Survivor]:
        return [s for s in self.survivors if s.equivalent is not None]

    @property
    def surviving(self) -> list[Survivor]:
        return [s for s in self.survivors if s.equivalent is None]

    @property
    def rate(self) -> float:
        scored = self.total - len(self.equivalent) - self.not_checked
        return 100.0 * self.caught / scored if scored else 100.0


def load_modules() -> dict[str, dict[str, list[str]]]:
    with MODULES.open("rb") as f:
        modules: dict[str, dict[str, list[str]]] = tomllib.load(f)["modules"]
    return modules


@dataclass
class Equivalents:
    entries: list[dict[str, str]]  # one mutant each: file, removed, added, reason
    row_rules: list[dict[str, Any]]  # [[row_columns]]: files, names, reason


def load_equivalent() -> Equivalents:
    if not EQUIVALENT.exists():
        return Equivalents([], [])
    with EQUIVALENT.open("rb") as f:
        data = tomllib.load(f)
    entries: list[dict[str, str]] = data.get("equivalent", [])
    for entry in entries:
        missing = {"file", "removed", "added", "reason"} - set(entry)
        if missing:
            sys.exit(f"{EQUIVALENT}: an entry lacks {', '.join(sorted(missing))}: {entry}")
    rules: list[dict[str, Any]] = data.get("row_columns", [])
    for rule in rules:
        missing = {"files", "names", "reason"} - set(rule)
        if missing:
            sys.exit(f"{EQUIVALENT}: a row_columns rule lacks {', '.join(sorted(missing))}")
    return Equivalents(entries, rules)


def _lines(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.strip().splitlines() if line.strip())


def _row_keys_folded(line: str, names: list[str]) -> str:
    """``line`` with the string keys of ``name["key"]`` lower-cased, for each row name."""
    # A name, or ")" for the result of a call (``tx.clip(clip_id)["state"]``).
    alternatives = "|".join(rf"\b{re.escape(n)}" if n.isidentifier() else re.escape(n)
                            for n in names)
    pattern = r"(" + alternatives + r")\[(['\"])([^'\"]*)\2\]"
    return re.sub(pattern, lambda m: f"{m[1]}[{m[2]}{m[3].lower()}{m[2]}]", line)


# SQL as this code writes it: keywords in capitals.  A statement or a piece of one (split
# over several string literals) has a placeholder or two of them as whole words.
_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|WITH|FROM|WHERE|AND|OR|NOT|IS|NULL|IN|"
                  r"ORDER BY|GROUP BY|LIMIT|VALUES|INTO|SET|AS|DESC|ASC|DISTINCT|JOIN|ON)\b")
_SQL_VALUE = re.compile(r"'[^']*'")


def _sql_case_only(survivor: Survivor) -> bool:
    """Whether the mutant only changed the case of SQL outside its quoted values.

    SQLite ignores the case of keywords and of table and column names, never of a
    string value ('duplicate'): those must be unchanged.
    """
    if len(survivor.removed) != 1 or len(survivor.added) != 1:
        return False
    before, after = survivor.removed[0], survivor.added[0]
    if before == after or before.lower() != after.lower():
        return False
    pairs = list(zip(re.findall(r'"([^"]*)"', before), re.findall(r'"([^"]*)"', after),
                     strict=False))
    changed = [(b, a) for b, a in pairs if b != a]
    # Nothing outside the string literals changed (the mutant is in one of them).
    outside = re.sub(r'"[^"]*"', '""', before) == re.sub(r'"[^"]*"', '""', after)
    return (outside and bool(changed)
            and all(_is_sql(b) and _SQL_VALUE.findall(b) == _SQL_VALUE.findall(a)
                    for b, a in changed))


def _is_sql(literal: str) -> bool:
    keywords = _SQL.findall(_SQL_VALUE.sub("", literal))
    return ("?" in literal and bool(keywords)) or len(keywords) >= 2


def equivalent_reason(survivor: Survivor, known: Equivalents) -> str | None:
    """The reason given for this mutant (same file, same lines removed and added), or None."""
    for entry in known.entries:
        if (fnmatch.fnmatch(survivor.file, entry["file"])
                and _lines(entry["removed"]) == survivor.removed
                and _lines(entry["added"]) == survivor.added):
            return entry["reason"]
    if _sql_case_only(survivor):
        return ("SQL keywords and table and column names are case-insensitive in SQLite; the "
                "statement holds no quoted value whose case would matter.")
    for rule in known.row_rules:
        if (any(fnmatch.fnmatch(survivor.file, f) for f in rule["files"])
                and len(survivor.removed) == len(survivor.added)
                and survivor.removed != survivor.added
                and [_row_keys_folded(x, rule["names"]) for x in survivor.removed]
                == [_row_keys_folded(x, rule["names"]) for x in survivor.added]):
            return str(rule["reason"])
    return None


def _tree_files() -> list[str]:
    """The working tree as git sees it (tracked and new files, nothing ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    return [name for name in listed
            if name and not name.startswith("mutation-run/") and (ROOT / name).is_file()]


def source_digest() -> str:
    """SHA-256 of the code under test (agent/, drivers/, config/): a rerun of the survivors
    (--again) counts the earlier run's killed mutants only against the very same code."""
    digest = hashlib.sha256()
    for name in sorted(n for n in _tree_files() if n.startswith(("agent/", "drivers/",
                                                                  "config/"))):
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes() + b"\0")
    return digest.hexdigest()


def source_files(module: dict[str, list[str]]) -> list[str]:
    files = sorted({str(p.relative_to(ROOT)) for pattern in module["files"]
                    for p in ROOT.glob(pattern) if p.name != "__init__.py" or p.stat().st_size})
    if not files:
        sys.exit(f"{MODULES}: no file matches {module['files']}")
    return files


def copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked and new files, nothing ignored)."""
    for name in _tree_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def mutmut_config(files: list[str], module: dict[str, list[str]]) -> str:
    def block(key: str, values: list[str]) -> str:
        return f"{key} =\n" + "".join(f"    {v}\n" for v in values)

    # Tests that read the source itself (not its behaviour) see mutmut's rewritten copy.
    deselect = [arg for test in module.get("deselect", []) for arg in ("--deselect", test)]
    return ("\n[mutmut]\n"
            + block("source_paths", ["agent/", "drivers/"])
            + block("only_mutate", files)
            + block("do_not_mutate_patterns", NOT_MUTATED)
            + block("pytest_add_cli_args_test_selection", module["tests"])
            + block("pytest_add_cli_args", ["-p", "no:cacheprovider", "-q", *deselect])
            + block("also_copy", ["config/", "docs/", "scripts/"])
            # A mutant that loops is stopped after (its tests' time + 2 s) x 6 of wall time.
            + "timeout_multiplier = 6.0\ntimeout_constant = 2.0\n"
            + "use_git_change_detection = false\n")


def mutmut(work: Path, *args: str, timeout: float | None = None,
           log: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "mutmut"
    out = log.open("w") if log is not None else subprocess.PIPE
    # The sealed stations the tests build are built once per module run (tests/support/
    # templates.py), not once per mutant.
    env = {**os.environ, "BWC_TEST_TEMPLATES": str(work / "templates")}
    try:
        proc = subprocess.Popen([str(exe), *args], cwd=work, stdout=out, env=env,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            stdout, _ = proc.communicate()
            raise
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout or "", "")


def parse_diff(diff: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    path, removed, added = "", [], []
    for line in diff.splitlines():
        if line.startswith("--- "):
            path = line[4:].strip()
        elif line.startswith("+++ ") or line.startswith("@@") or line.startswith("#"):
            continue
        elif line.startswith("-"):
            removed.append(line[1:].strip())
        elif line.startswith("+"):
            added.append(line[1:].strip())
    return path, tuple(r for r in removed if r), tuple(a for a in added if a)


def verdicts(listing: str, rerun: set[str] | None,
             equivalent_before: set[str]) -> list[tuple[str, str]]:
    """Each mutant of ``mutmut results --all true`` with its status.

    ``rerun``: with --again, the last run's survivors, the only mutants run again.  mutmut
    forgets every verdict when the module's test list changed (its test selection is part
    of its configuration), so the others keep the last run's: killed stays killed (tests are
    only ever added), and an equivalent one is still a survivor, listed with its reason.
    """
    found = []
    for line in listing.splitlines():
        mutant, sep, status = line.strip().rpartition(": ")
        if not sep:
            continue
        if rerun is not None and mutant not in rerun:
            status = "survived" if mutant in equivalent_before else "killed"
        found.append((mutant, status))
    return found


def run_module(name: str, module: dict[str, list[str]], args: argparse.Namespace,
               entries: Equivalents) -> Result:
    """Mutate the module's files in a fresh copy of the tree and run every mutant.

    With ``--again``: in the copy of the module's last run, with the tests as they are now,
    run only that run's survivors.  Its killed mutants stay killed (tests are only ever
    added, never loosened), which holds only for the same code: refused unless
    source_digest() is the last run's.
    """
    result = Result(name, source=source_digest(), again=bool(args.again))
    work = RUN_DIR / name
    files = source_files(module)
    survivors: list[str] = []
    equivalent_before: set[str] = set()
    if args.again:
        last = _last_result(name)
        if last is None or last.get("source") != result.source or not last.get("finished"):
            sys.exit(f"scripts/mutate --again {name}: the code changed since its last full "
                     "run (or it has none, or it did not finish); run scripts/mutate " + name)
        survivors = list(last["surviving"])
        equivalent_before = set(last["equivalent"])
        result.minutes = float(last["minutes"])
        result.rerun_minutes = float(last.get("rerun_minutes", 0.0))
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    copy_tree(work)  # with --again: the tests as they are now (mutmut copies them in)
    with (work / "setup.cfg").open("a", encoding="utf-8") as cfg:
        cfg.write(mutmut_config(files, module))
    print(f"== {name}: {', '.join(files)} against {', '.join(module['tests'])}"
          + (f" ({len(survivors)} survivors again)" if args.again else ""), flush=True)
    started = time.monotonic()
    if not args.again or survivors:
        try:
            mutmut(work, "run", "--max-children", str(args.jobs), *survivors,
                   timeout=args.timeout_min * 60,
                   log=work / ("mutmut-again.log" if args.again else "mutmut-run.log"))
        except subprocess.TimeoutExpired:
            result.finished = False
    spent = (time.monotonic() - started) / 60
    result.minutes += spent
    if args.again:
        result.rerun_minutes += spent
    listing = mutmut(work, "results", "--all", "true").stdout
    rerun = set(survivors) if args.again else None
    for mutant, status in verdicts(listing, rerun, equivalent_before):
        result.total += 1
        if status in CAUGHT:
            result.caught += 1
        elif status == "not checked":
            result.not_checked += 1
        else:
            diff = mutmut(work, "show", mutant).stdout
            path, removed, added = parse_diff(diff)
            survivor = Survivor(mutant, status, path, diff, removed, added)
            survivor.equivalent = equivalent_reason(survivor, entries)
            result.survivors.append(survivor)
    if result.total == 0:
        result.finished = False
        print((work / "mutmut-run.log").read_text(errors="replace")[-3000:], file=sys.stderr)
    if result.not_checked:
        result.finished = False
    return result


def report(results: list[Result], min_rate: float) -> bool:
    ok = True
    for result in results:
        for survivor in result.surviving:
            print(f"\n-- survivor ({survivor.status}) {survivor.name}")
            print(survivor.diff.rstrip())
    print("\n| module | mutants | killed | equivalent | surviving | kill rate | minutes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        note = "" if r.finished else f" (unfinished: {r.not_checked} not run)"
        again = f" (of which {r.rerun_minutes:.1f} rerunning survivors)" \
            if r.rerun_minutes else ""
        print(f"| {r.module} | {r.total} | {r.caught} | {len(r.equivalent)} | "
              f"{len(r.surviving)} | {r.rate:.1f} %{note} | {r.minutes:.1f}{again} |")
        ok = ok and r.finished and r.rate >= min_rate
    RUN_DIR.mkdir(exist_ok=True)
    summary = [_summary(r) for r in results]
    (RUN_DIR / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for r, item in zip(results, summary, strict=True):
        if r.again and not r.finished:
            # A rerun that could not run its survivors (a test failing without any mutant,
            # say) keeps the last complete result, so --again can be tried once it is fixed.
            print(f"{r.module}: the rerun did not finish (mutation-run/{r.module}/"
                  "mutmut-again.log says why); its last complete result is kept")
            continue
        (RUN_DIR / str(item["module"]) / "result.json").write_text(json.dumps(item, indent=2))
    return ok


def _summary(r: Result) -> dict[str, object]:
    return {"module": r.module, "mutants": r.total, "killed": r.caught,
            "equivalent": [s.name for s in r.equivalent],
            "surviving": [s.name for s in r.surviving], "not_checked": r.not_checked,
            "kill_rate": round(r.rate, 1), "minutes": round(r.minutes, 1),
            "rerun_minutes": round(r.rerun_minutes, 1), "finished": r.finished,
            "source": r.source}


def _last_result(module: str) -> dict[str, Any] | None:
    path = RUN_DIR / module / "result.json"
    if not path.exists():
        return None
    last: dict[str, Any] = json.loads(path.read_text())
    return last


def print_last(modules: list[str]) -> None:
    """The table of each module's last run (mutation-run/<module>/result.json)."""
    print("| module | mutants | killed | equivalent | surviving | kill rate | minutes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in modules:
        path = RUN_DIR / name / "result.json"
        if not path.exists():
            print(f"| {name} | not run | | | | | |")
            continue
        r = json.loads(path.read_text())
        again = r.get("rerun_minutes", 0.0)
        note = f" (of which {again:.1f} rerunning survivors)" if again else ""
        print(f"| {name} | {r['mutants']} | {r['killed']} | {len(r['equivalent'])} | "
              f"{len(r['surviving'])} | {r['kill_rate']:.1f} % | {r['minutes']:.1f}{note} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/mutate", description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help="module names (default: all, in order)")
    parser.add_argument("--list", action="store_true", help="list the modules and exit")
    parser.add_argument("--last", action="store_true",
                        help="print the table of each module's last run, run nothing")
    parser.add_argument("--again", action="store_true",
                        help="rerun only the survivors of each module's last run, against "
                             "the tests as they are now (the code must be unchanged)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--timeout-min", type=float, default=30.0,
                        help="give a module up after this many minutes (default 30)")
    parser.add_argument("--min-rate", type=float, default=90.0,
                        help="the lowest kill rate that passes, in %% (default 90)")
    args = parser.parse_args(argv)
    modules = load_modules()
    if args.list:
        for name, module in modules.items():
            print(f"{name}: {' '.join(source_files(module))}\n    tests: "
                  f"{' '.join(module['tests'])}")
        return 0
    if args.last:
        print_last(args.modules or list(modules))
        return 0
    unknown = [m for m in args.modules if m not in modules]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(modules)}")
    entries = load_equivalent()
    results = [run_module(name, modules[name], args, entries)
               for name in (args.modules or list(modules))]
    return 0 if report(results, args.min_rate) else 1


if __name__ == "__main__":
    sys.exit(main())
