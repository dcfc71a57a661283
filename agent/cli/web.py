"""``bwc-agent web user add|passwd|remove|list``: the IT accounts of the station's pages.

The password is read from the terminal without echo (asked twice), or, when
standard input is not a terminal, from its first line (for provisioning
scripts: ``printf '%s\\n' "$PW" | bwc-agent web user add alice --config ...``).
It never appears on the command line, where ``ps`` would show it.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from agent.cli.common import add_config_arg, load_config
from agent.web.accounts import MAX_PASSWORD, AccountError, Accounts, users_path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("web", help="the station's pages: IT accounts")
    web_sub = parser.add_subparsers(dest="web_command", metavar="COMMAND", required=True)
    user = web_sub.add_parser("user", help="IT accounts of the IT page")
    user_sub = user.add_subparsers(dest="user_command", metavar="COMMAND", required=True)
    for name, help_text in (("add", "add an account (password from the terminal or stdin)"),
                            ("passwd", "set a new password for an account"),
                            ("remove", "remove an account (it cannot sign in any more)"),
                            ("list", "list the accounts")):
        cmd = user_sub.add_parser(name, help=help_text)
        add_config_arg(cmd)
        if name != "list":
            cmd.add_argument("name", help="account name (letters, digits, '.', '_', '-')")
        cmd.set_defaults(handler=run, action=name)


def read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != first:
            raise AccountError("the two passwords differ; nothing was changed")
        return first
    line = sys.stdin.readline(MAX_PASSWORD + 2)
    return line.rstrip("\r\n")


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    accounts = Accounts(users_path(config))
    if args.action == "list":
        for name in accounts.names():
            print(name)
        return 0
    if args.action == "remove":
        accounts.revoke(args.name)
        print(f"removed {args.name} from {accounts.path}")
        return 0
    if args.action == "passwd" and args.name not in accounts.names():
        raise AccountError(f"no account {args.name!r} in {accounts.path}")
    password = read_password()
    accounts.add(args.name, password, replace=args.action == "passwd")
    print(f"{'password set for' if args.action == 'passwd' else 'added'} {args.name} "
          f"in {accounts.path}")
    return 0
