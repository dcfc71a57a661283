"""``bwc-agent mount`` / ``umount`` / ``install-udev``: station-mounted camera volumes.

``mount`` and ``umount`` run as root from ``bwc-mount@<name>.service`` (see
agent.mount.units); IT staff use ``install-udev`` once per station, and
``umount`` by hand to let a volume go.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from agent.cli.common import add_config_arg, load_config
from agent.mount import helper, units
from agent.mount.blockdev import BadDeviceError

EXIT_USAGE = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mount = sub.add_parser("mount", help="(root, from udev) mount a camera volume and hold it "
                                         "until the station is done with it")
    add_config_arg(mount)
    mount.add_argument("device", metavar="DEVICE", help="kernel name or node: sdb1, /dev/sdb1")
    mount.set_defaults(handler=run_mount)

    umount = sub.add_parser("umount", help="(root) unmount what `mount` mounted for DEVICE")
    add_config_arg(umount)
    umount.add_argument("device", metavar="DEVICE", help="kernel name or node: sdb1, /dev/sdb1")
    umount.set_defaults(handler=run_umount)

    install = sub.add_parser("install-udev", help="(root) install the udev rule and the "
                                                  "bwc-mount@.service unit")
    add_config_arg(install)
    install.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                         help="install below DIR instead of / (packaging, tests)")
    install.add_argument("--bin", type=Path, default=None, metavar="PATH",
                         help="the bwc-agent executable the unit runs (default: this one)")
    install.add_argument("--no-reload", action="store_true",
                         help="do not run `udevadm control --reload` and "
                              "`systemctl daemon-reload`")
    install.add_argument("--print", action="store_true",
                         help="print the rule and the unit instead of installing them")
    install.set_defaults(handler=run_install)


def _verbose_logging(args: argparse.Namespace) -> None:
    if not args.verbose:
        # The journal of bwc-mount@.service says what happened to each device.
        logging.getLogger().setLevel(logging.INFO)


def run_mount(args: argparse.Namespace) -> int:
    config = load_config(args)
    _verbose_logging(args)
    try:
        outcome = helper.hold(config, args.device, os.environ)
    except BadDeviceError as exc:
        print(f"bwc-agent: refusing device {args.device!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.device}: {outcome}")
    return 0


def run_umount(args: argparse.Namespace) -> int:
    config = load_config(args)
    _verbose_logging(args)
    try:
        points = helper.let_go(config, args.device)
    except BadDeviceError as exc:
        print(f"bwc-agent: refusing device {args.device!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.device}: " + (f"unmounted {', '.join(points)}" if points else "not mounted"))
    return 0


def _this_executable() -> Path:
    found = shutil.which("bwc-agent")
    argv0 = Path(sys.argv[0])
    if argv0.name == "bwc-agent" and argv0.exists():
        return argv0.resolve()
    if found is not None:
        return Path(found).resolve()
    return Path(sys.executable).resolve().parent / "bwc-agent"


def run_install(args: argparse.Namespace) -> int:
    config = load_config(args)  # nothing is written unless the configuration is valid
    helper.mount_section(config)
    config_path = Path(os.path.abspath(args.config))
    bin_path = args.bin.resolve() if args.bin is not None else _this_executable()
    if args.print:
        print(f"# {units.RULES_DIR / units.RULE_NAME}")
        print(units.render_rule())
        print(f"# {units.UNITS_DIR / units.UNIT_NAME}")
        print(units.render_unit(bin_path, config_path))
        return 0
    for path in units.install(args.root, bin_path, config_path, reload=not args.no_reload):
        print(f"installed {path}")
    return 0
