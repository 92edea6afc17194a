"""Command line: `crio-fast [flags]` runs the daemon; subcommands inspect it.

    crio-fast [flags]            serve CRI v1 on the configured socket
    crio-fast [flags] config     print the effective configuration as TOML
    crio-fast version            print the version
    crio-fast [flags] check      say what this node lacks to run crio-fast
    crio-fast [flags] install-service   install the systemd unit and the default configuration
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from crio_fast.config import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    add_config_flags,
    defaults_with_flags,
    load_config,
    render_config,
)
from crio_fast.systemd import log_formatter
from crio_fast.version import __version__, git_commit, version_string

if TYPE_CHECKING:
    from crio_fast.image.importer import Admit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crio-fast",
        description="A Kubernetes CRI v1 container engine. Without a subcommand, runs the daemon.",
    )
    parser.add_argument("--version", action="version", version=f"crio-fast {version_string()}")
    add_config_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    config_cmd = sub.add_parser("config", help="print the effective configuration as commented TOML")
    config_cmd.add_argument(
        "--only-changed", action="store_true", help="print only the keys that differ from the built-in defaults"
    )
    sub.add_parser("version", help="print version information")
    sub.add_parser(
        "check", help="check this node: kernel features, cgroups, monitor, CNI plugins, runtimes (exit 1 if any is missing)"
    )
    service_cmd = sub.add_parser(
        "install-service",
        help="install the systemd unit (replacing an older one), a default crio.conf (only if there is none) "
             "and an empty crio.conf.d/; flags before the subcommand go into that crio.conf",
    )
    # Not --root: that is the daemon's storage root, a configuration flag.
    service_cmd.add_argument("--prefix", default="/", type=Path,
                             help="write under this directory instead of / (a staging root; no systemctl is run)")
    service_cmd.add_argument("--exec-start", default=None,
                             help="the command the unit runs (default: this installation's crio-fast)")
    service_cmd.add_argument("--now", action="store_true", help="also enable and (re)start the unit")
    image_cmd = sub.add_parser("image", help="work on the image store directly (air-gapped nodes)")
    image_sub = image_cmd.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    import_cmd = image_sub.add_parser("import", help="load an OCI layout archive or a docker-archive tarball")
    import_cmd.add_argument("archive", help="path of the .tar archive")
    import_cmd.add_argument("--tag", action="append", default=[], help="also tag the image with this name (repeatable)")
    import_cmd.add_argument("--skip-signature-policy", action="store_true",
                            help="load the image whatever the signature policy ([crio.image] signature_policy) says")
    image_sub.add_parser("ls", help="list the images in the store")
    return parser


def _load(args: argparse.Namespace):
    config, warnings = load_config(args)
    for warning in warnings:
        logging.getLogger("crio_fast.config").warning("%s", warning)
    return config


def cmd_version() -> int:
    print(f"Version:        {__version__}")
    print(f"GitCommit:      {git_commit() or 'unknown'}")
    print(f"PythonVersion:  {platform.python_version()}")
    print(f"Platform:       {sys.platform}/{platform.machine()}")
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from crio_fast.errors import CrioError
    from crio_fast.image.importer import ArchiveImportError, import_archive
    from crio_fast.image.ingest import LayerVerificationError
    from crio_fast.image.policy import PolicyError
    from crio_fast.image.store import ImageStore

    config = _load(args)
    store = ImageStore.open(config.crio.root, collect_garbage=False)
    if args.image_command == "import":
        try:
            admit = None if args.skip_signature_policy else _signature_policy_check(config)
        except PolicyError as exc:
            print(f"crio-fast: {exc}", file=sys.stderr)
            return 1
        try:
            imported = import_archive(store, args.archive, extra_tags=args.tag, admit=admit)
        except (ArchiveImportError, LayerVerificationError, OSError, CrioError) as exc:
            print(f"crio-fast: importing {args.archive}: {exc}", file=sys.stderr)
            return 1
        record = imported.record
        print(f"{record.id} {' '.join(record.repo_tags) or '<untagged>'} ({imported.layers_added} new layers)")
        return 0
    print(f"{'IMAGE ID':<15} {'SIZE':>10}  NAMES")
    for record in store.list_images():
        names = " ".join(record.repo_tags or record.repo_digests) or "<none>"
        print(f"{record.id.split(':', 1)[1][:13]:<15} {_human(record.size):>10}  {names}")
    return 0


def _signature_policy_check(config: Config) -> Admit | None:
    """What `image import` asks before storing layers: the node's signature policy, if there is one."""
    from crio_fast.image.policy import Policy
    from crio_fast.image.signatures import enforce_import

    if not config.image.signature_policy:
        return None
    policy = Policy.load(config.image.signature_policy)

    def admit(names: list[str], manifest_raw: bytes | None) -> None:
        asyncio.run(enforce_import(policy, names, manifest_raw, registries_d=config.image.registries_d))

    return admit


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.1f}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1000
    return f"{size}B"


def cmd_install_service(args: argparse.Namespace) -> int:
    from crio_fast.systemd import UNIT_NAME, default_exec_start, install_service, systemctl, systemd_booted

    config, warnings = defaults_with_flags(args)
    for warning in warnings:
        logging.getLogger("crio_fast.config").warning("%s", warning)
    prefix: Path = args.prefix
    for item in install_service(prefix, args.exec_start or default_exec_start(), render_config(config),
                                DEFAULT_CONFIG_PATH, DEFAULT_CONFIG_DIR):
        print(f"{'wrote' if item.written else 'kept '} {item.path}")
    if prefix.resolve() != Path("/"):
        return 0
    if not systemd_booted():
        print("systemd is not running here: the unit is in place for when it is")
        return 1 if args.now else 0
    steps = [("daemon-reload",)]
    if args.now:
        steps += [("enable", UNIT_NAME), ("restart", UNIT_NAME)]
    for step in steps:
        result = systemctl(*step, timeout=None)
        if result.returncode != 0:
            print(f"crio-fast: systemctl {' '.join(step)} failed: {result.stderr.strip()}", file=sys.stderr)
            return 1
    if args.now:
        print(f"{UNIT_NAME} enabled and started")
    else:
        print(f"{UNIT_NAME} installed; start it with: systemctl enable --now {UNIT_NAME}")
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    from crio_fast.server.app import Daemon, apply_log_level
    from crio_fast.server.listener import ListenError

    config = _load(args)
    apply_log_level(config.runtime.log_level)
    daemon = Daemon(config, reload_config=lambda: load_config(args))
    try:
        asyncio.run(daemon.run())
    except ListenError as exc:
        print(f"crio-fast: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"crio-fast: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "version":
            return cmd_version()
        if args.command == "image":
            return cmd_image(args)
        if args.command == "install-service":
            return cmd_install_service(args)
        if args.command == "check":
            from crio_fast.check import report, run_checks

            return report(run_checks(_load(args)), sys.stdout)
        if args.command == "config":
            print(render_config(_load(args), only_changed=args.only_changed), end="")
            return 0
        return cmd_daemon(args)
    except ConfigError as exc:
        print(f"crio-fast: configuration error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
