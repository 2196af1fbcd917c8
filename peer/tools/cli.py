"""`hearsay` command line.

Commands: ``run`` (one peer), ``cluster`` (N peers on loopback with a live table),
``certs`` (a cluster CA and peer certificates); and, asking one running peer through
its admin API: ``status``, ``peers``, ``metrics``, ``checkpoint``, ``pull-model``,
``leave``, ``set`` (a runtime knob) and ``top`` (the whole swarm, live).

Every failure the user can cause (bad option, unreachable peer, bad plug-in) ends
with one line on stderr and a non-zero exit code, never a traceback. Flags and the
configuration are checked before anything heavy (torch, grpc) is imported, so a
mistake is reported at once.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from peer import __version__
from peer.runtime.config import (LR_SCHEDULES, SECRET_OPTIONS, ConfigError, PeerConfig, add_flags, did_you_mean, load,
                                 merge_rules)
from peer.runtime.plugins import PluginError

if TYPE_CHECKING:
    from peer.tools.cluster import ClusterSpec

EXIT_USAGE = 2
EXIT_FAILURE = 1
# The admin port a peer listens on by default (PeerConfig.admin_port): what `--admin HOST` dials.
DEFAULT_ADMIN_PORT = 7071


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: the problem, then the nearest option or the valid values."""

    def error(self, message: str) -> NoReturn:
        # One line whatever the arguments hold: control characters and the surrogate escapes of
        # bytes that are not UTF-8 (which stderr could not even encode) are shown escaped.
        line = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                       for c in f"{self.prog}: error: {message}{self._hint(message)}")
        self.exit(EXIT_USAGE, line + "\n")

    def _hint(self, message: str) -> str:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            return did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
        unknown = re.match(r"unrecognized arguments: (\S+)", message)
        if unknown and unknown.group(1).startswith("-"):
            flag = unknown.group(1).partition("=")[0]
            return did_you_mean(flag, [o for o in self._option_string_actions if o.startswith("--")])
        if message.startswith("the following arguments are required: COMMAND"):
            return f" (one of {', '.join(self._commands())})"
        return ""

    def _commands(self) -> list[str]:
        return [name for a in self._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices]


def seconds(text: str) -> float:
    """An argparse type: a finite, positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and 0 < value <= 86400):
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most 86400 seconds")
    return value


def admin_address(text: str) -> str:
    """An argparse type: ``HOST[:PORT]`` (``[v6]:PORT`` for IPv6), the port 7071 when left out."""
    host, port = text, ""
    if text.startswith("["):  # [::1]:7071
        end = text.find("]")
        if end < 0 or (text[end + 1:] and not text[end + 1:].startswith(":")):
            raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT or [IPv6]:PORT")
        host, port = text[:end + 1], text[end + 2:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif text.count(":") > 1:
        raise argparse.ArgumentTypeError(f"{text!r}: write an IPv6 address as [ADDRESS]:PORT")
    if not host.strip("[]"):
        raise argparse.ArgumentTypeError(f"{text!r} has no host")
    if not port:
        return f"{host}:{DEFAULT_ADMIN_PORT}"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be a number in 1..65535")
    return f"{host}:{int(port)}"


def _status_lines(s) -> list[str]:  # noqa: ANN001 - admin_pb2.StatusResponse
    acc = f"{s.accuracy:.4f}" if s.accuracy >= 0 else "not evaluated yet"
    return [
        f"peer          {s.peer_id}",
        f"address       {s.gossip_address}",
        f"model         {s.model} on {s.dataset} ({s.samples} samples, {s.device})",
        f"steps         {s.steps}{' (training done)' if s.training_done else ''}",
        f"accuracy      {acc}",
        f"loss          {s.loss:.4f}",
        f"lr            {s.lr:.4g}" + (f" ({s.lr_schedule} schedule)" if s.lr_schedule not in ("", "constant") else ""),
        f"known peers   {s.known_peers}",
        f"gossip        every {s.gossip_interval:g} s, codec {s.codec}, merge {s.merge}, log level {s.log_level}",
        _mode_line(s),
        f"exchanges     {s.exchanges} ({s.merges} merged, {s.rejected} refused"
        + (f"; {s.answered_early} answered while their request arrived" if s.answered_early else "") + ")",
        f"bytes in/out  {s.bytes_received} / {s.bytes_sent}",
        f"model         version {s.model_version}, digest {s.model_digest[:16]}",
        f"uptime        {s.uptime_seconds:.1f} s",
        f"memory        model {_mb(s.memory_model_bytes)}, optimizer {_mb(s.memory_optimizer_bytes)}, "
        f"sender replicas {_mb(s.memory_sender_bytes)} ({s.sender_links} links), "
        f"receiver copies {_mb(s.memory_receiver_bytes)} ({s.receiver_links} links); "
        f"bound {_mb(s.memory_bound_bytes)} at max_links {s.max_links}",
    ]


def _mode_line(s) -> str:  # noqa: ANN001 - admin_pb2.StatusResponse
    if s.mode == "sampled":
        return (f"mode          sampled rounds: holds round {s.round}'s aggregate, {s.round_role} in round "
                f"{s.round + 1}, {s.rounds_aggregated} round(s) aggregated")
    return f"mode          {s.mode or 'gossip'}, fanout {s.fanout}"


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def cmd_run(args: argparse.Namespace) -> int:
    from peer.runtime import logs

    config = load(args)
    if args.check_config:
        import dataclasses

        shown = {k: ("***" if k in SECRET_OPTIONS and v else v) for k, v in dataclasses.asdict(config).items()}
        print(json.dumps({"ok": True, "config": shown}))
        return 0
    logs.setup(config.log_level, config.log_json, config.resolved_peer_id())
    from peer.transport.ports import StartError, check_ports

    try:
        check_ports(config)  # at once, not after loading torch, the data and the model
        from peer.runtime.node import run

        code = run(config)
    except StartError as e:  # a port taken, an address that cannot be bound: one line, no traceback
        print(f"hearsay run: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    _exit_at_once(code)


def _exit_at_once(code: int) -> NoReturn:
    """End a stopped peer's process without the interpreter's finalisation.

    By now the peer has left, drained, written its final checkpoint and closed its servers;
    what finalisation would add is tearing down torch, grpc and their threads object by
    object: about 1.4 s of CPU per peer (measured; bench/RESULTS.md, session 5), which every
    stop, restart and test of a real peer pays. Logs and the standard streams are flushed first.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to lose
            pass
    os._exit(code)


def _client(args: argparse.Namespace):  # noqa: ANN202 - AdminClient, imported lazily
    from peer.tools.admin_client import AdminClient, resolve_token

    return AdminClient(args.admin, args.timeout, token=resolve_token(args.token, args.token_file))


def _as_dict(message) -> dict[str, Any]:  # noqa: ANN001 - a protobuf message
    """The message as JSON-ready data, 64-bit integers as numbers (protobuf's JSON mapping
    writes them as strings, which a ``jq '.steps > 10'`` would silently compare as text)."""
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.json_format import MessageToDict

    wide = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
            FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}

    def numbers(descriptor: Any, data: dict[str, Any]) -> dict[str, Any]:
        for f in descriptor.fields:
            if f.name not in data:
                continue
            if f.type == FieldDescriptor.TYPE_MESSAGE and not f.message_type.GetOptions().map_entry:
                items = data[f.name] if isinstance(data[f.name], list) else [data[f.name]]
                for item in items:
                    numbers(f.message_type, item)
            elif f.type in wide:
                value = data[f.name]
                data[f.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        return data

    as_json = MessageToDict(message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
    return numbers(message.DESCRIPTOR, as_json)


def _ask(args: argparse.Namespace, call: Callable[[Any], Any], text: Callable[[Any], str]) -> int:
    """One admin call: its reply as JSON with ``--json``, else as ``text(reply)``."""
    with _client(args) as client:
        reply = call(client)
    print(json.dumps(_as_dict(reply)) if args.json else text(reply))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    return _ask(args, lambda client: client.status(), lambda s: "\n".join(_status_lines(s)))


def cmd_peers(args: argparse.Namespace) -> int:
    with _client(args) as client:
        peers = client.list_peers().peers
    if args.json:
        print(json.dumps([_as_dict(p) for p in peers]))
        return 0
    header = f"{'id':<22} {'address':<22} {'state':<8} {'source':<8} {'seen':>7} {'exch':>6} {'fail':>5} " \
             f"{'bytes in':>12} {'bytes out':>12} {'rep':>6}"
    print(header)
    for p in peers:
        seen = f"{p.last_contact_seconds_ago:.1f}s" if p.last_contact_seconds_ago >= 0 else "never"
        print(f"{(p.peer_id or '?'):<22} {p.address:<22} {p.state:<8} {p.source:<8} {seen:>7} {p.exchanges:>6} "
              f"{p.failures:>5} {p.bytes_received:>12} {p.bytes_sent:>12} {p.reputation:>6.2f}"
              f"{' BANNED' if p.banned else ''}")
        if p.reputation_reason:  # why its score is down (or why it is banned), under its row
            print(f"    {p.reputation_reason}")
    if not peers:
        print("(no known peers)")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    with _client(args) as client:
        m = client.metrics()
    print(json.dumps(dict(sorted(m.samples.items()))) if args.json else m.prometheus_text, end="" if not args.json else "\n")
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    return _ask(args, lambda client: client.save_checkpoint(),
                lambda c: f"checkpoint {c.path} (step {c.step}, {c.size_bytes} bytes, sha256 {c.sha256[:16]})")


def cmd_pull_model(args: argparse.Namespace) -> int:
    from peer.tools.model_files import SUFFIXES, ModelFileError, convert, target_path, write_atomically

    try:
        out = target_path(args.output, args.format)  # checked before the download, not after
        with _client(args) as client:
            if out.is_dir():  # a directory: the file inside it is named after the peer
                name = re.sub(r"[^A-Za-z0-9._-]", "_", client.status().peer_id).lstrip(".") or "model"
                out = out / f"{name}{SUFFIXES[args.format]}"
            data = client.download_model()
        data = convert(data, args.format)
        write_atomically(out, data)
    except ModelFileError as e:
        print(f"hearsay pull-model: error: {e}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps({"path": str(out), "bytes": len(data), "format": args.format}))
    else:
        how = "torch.load(path, weights_only=True)" if args.format == "torch" else "safetensors.torch.load_file(path)"
        print(f"wrote {len(data)} bytes to {out} (load with {how})")
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    return _ask(args, lambda client: client.leave(),
                lambda r: f"leaving: draining {r.in_flight} exchange(s) in flight, then stopping")


def cmd_set(args: argparse.Namespace) -> int:
    key, sep, value = args.assignment.partition("=")
    if not sep or not key:
        print(f"hearsay set: error: expected KEY=VALUE, got {args.assignment!r}", file=sys.stderr)
        return EXIT_USAGE
    return _ask(args, lambda client: client.set(key.strip(), value.strip()),
                lambda r: f"{r.key} = {r.value} (was {r.previous})")


def cmd_top(args: argparse.Namespace) -> int:
    from peer.tools.top import run_top

    with _client(args) as client:
        return run_top(client, args.admin, interval=args.interval, once=args.once, as_json=args.json)


def cluster_spec(args: argparse.Namespace) -> ClusterSpec:
    """What `hearsay cluster`'s flags ask for."""
    from peer.tools.cluster import ClusterSpec

    return ClusterSpec(peers=args.n, duration=args.duration, target_accuracy=args.target_accuracy,
                       out=args.out, model=args.model, partition=args.partition, alpha=args.alpha,
                       merge=args.merge, gossip_interval=args.gossip_interval, seed=args.seed, mode=args.mode,
                       extra_args=args.peer_arg or [], tls=args.tls, dataset=args.dataset,
                       data_path=args.data_path, dataset_args=args.dataset_arg or [], shard_count=args.shard_count,
                       eval_samples=args.eval_samples, eval_every=args.eval_every, eval_budget=args.eval_budget,
                       final_eval=args.final_eval, lr_schedule=args.lr_schedule, lr_horizon=args.lr_horizon,
                       lr_floor=args.lr_floor)


def cmd_cluster(args: argparse.Namespace) -> int:
    from peer.transport.tls_identity import CertError
    from peer.tools.cluster import check_spec, preflight, run_cluster

    spec = cluster_spec(args)
    try:
        check_spec(spec)
        preflight(spec)  # a bad data set or model is one line here, not N peers dying at start-up
        return run_cluster(spec)
    except (ValueError, CertError) as e:  # PluginError and ConfigError are ValueErrors too
        print(f"hearsay cluster: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def cmd_certs(args: argparse.Namespace) -> int:
    from peer.tools.certs import make_certs
    from peer.transport.tls_identity import CertError

    try:
        issued = make_certs(args.out, args.names, dns=args.dns, ips=args.ip, days=args.days)
    except CertError as e:
        print(f"hearsay certs: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"hearsay certs: error: {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILURE
    if issued.ca_created:
        print(f"CA      {issued.ca_cert} (new); its key {issued.ca_key} signs peers: keep it off them")
    else:
        print(f"CA      {issued.ca_cert} (existing, reused)")
    for peer in issued.peers:
        print(f"{peer.name:<7} {peer.cert}  key {peer.key}")
    print(f"each peer needs the CA certificate and its own pair: hearsay run --tls-ca {issued.ca_cert} "
          f"--tls-cert {args.out}/<name>.pem --tls-key {args.out}/<name>.key --require-tls")
    return 0


def _add_admin_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin", default=f"127.0.0.1:{DEFAULT_ADMIN_PORT}", type=admin_address, metavar="HOST[:PORT]",
                   help=f"admin address of the peer to ask; the port defaults to {DEFAULT_ADMIN_PORT} "
                        f"(default: 127.0.0.1:{DEFAULT_ADMIN_PORT})")
    p.add_argument("--timeout", type=seconds, default=5.0, help="seconds to wait for an answer (default: 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--token", default=None, help="admin bearer token (default: $HEARSAY_ADMIN_TOKEN)")
    p.add_argument("--token-file", default=None, metavar="FILE", help="file holding the admin bearer token")


def _admin_command(sub: Any, name: str, help: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """A command that asks one running peer through its admin API."""
    p = sub.add_parser(name, help=help)
    _add_admin_flags(p)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hearsay", description="Gossip-learning peer daemon.")
    parser.add_argument("--version", action="version", version=f"hearsay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run one peer (options: file < HEARSAY_* environment < flags)")
    add_flags(p)
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration from file, environment and flags, print it, and exit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("cluster", help="run N peers on loopback with a live progress table")
    p.add_argument("-n", type=int, default=4, help="number of peers (default: 4)")
    p.add_argument("--duration", type=float, default=120.0,
                   help="stop this many seconds after launch, start-up included (default: 120)")
    p.add_argument("--target-accuracy", type=float, default=None, metavar="A",
                   help="stop as soon as every peer is at or above live test accuracy A in the same poll")
    p.add_argument("--out", default="results", metavar="DIR", help="where results.json and accuracy.png go")
    p.add_argument("--model", default="mlp", help="model of every peer (default: mlp)")
    p.add_argument("--dataset", default="digits",
                   help="data set of every peer: digits, fashion-mnist, idx:DIR, npz:FILE or module:factory "
                        "(default: digits)")
    p.add_argument("--data-path", default="", metavar="DIR", help="directory of the fashion-mnist files")
    p.add_argument("--dataset-arg", action="append", metavar="KEY=VALUE",
                   help="data set option passed to every peer (repeatable), e.g. limit=12000")
    p.add_argument("--shard-count", type=int, default=None, metavar="K",
                   help="split the training data into K shards (default: -n); peer i trains on shard i, "
                        "so -n 1 --shard-count 8 is one peer alone on the first of 8 shards")
    p.add_argument("--eval-samples", type=int, default=None, metavar="N",
                   help="live evaluation on a seeded subset of N test samples (0 = all; default: the peers' 1000)")
    p.add_argument("--eval-every", type=int, default=None, metavar="STEPS",
                   help="evaluate at most every STEPS steps (default: the peers' 25)")
    p.add_argument("--eval-budget", type=float, default=None, metavar="SHARE",
                   help="largest share of a peer's training time evaluation may take (default: the peers' 0.1)")
    p.add_argument("--final-eval", action=argparse.BooleanOptionalAction, default=True,
                   help="download every model at the end and evaluate it on the full test set (default: on)")
    p.add_argument("--partition", default="iid", choices=("iid", "dirichlet"))
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha for --partition dirichlet")
    p.add_argument("--merge", default=PeerConfig.merge, choices=merge_rules(),
                   help=f"every peer's merge rule (default: the peers' {PeerConfig.merge})")
    p.add_argument("--gossip-interval", type=float, default=PeerConfig.gossip_interval,
                   help=f"seconds between a peer's exchanges (default: the peers' {PeerConfig.gossip_interval:g})")
    p.add_argument("--mode", default="gossip", choices=("gossip", "sampled"),
                   help="how every peer learns: gossip, or server-free sampled rounds (default: gossip)")
    p.add_argument("--lr-schedule", default="auto", choices=("auto", *LR_SCHEDULES),
                   help="every peer's learning rate over the run; auto = cosine from lr down to lr * --lr-floor "
                        "at --lr-horizon when the run's length is known (no --target-accuracy) or --lr-horizon "
                        "is given, else constant (default: auto)")
    p.add_argument("--lr-horizon", type=float, default=None, metavar="SECONDS",
                   help="seconds after launch at which an annealed rate reaches its floor (default: --duration)")
    p.add_argument("--lr-floor", type=float, default=None, metavar="FRACTION",
                   help=f"the annealed rate at the horizon, a fraction of lr (default: the peers' "
                        f"{PeerConfig.lr_floor:g})")
    p.add_argument("--seed", type=int, default=0, help="base seed; peer i uses seed+i")
    p.add_argument("--peer-arg", action="append", metavar="ARG",
                   help="extra flag passed to every `hearsay run` (repeatable), e.g. --peer-arg=--lr=0.1")
    p.add_argument("--tls", action="store_true",
                   help="make a cluster CA and a certificate per peer in DIR/tls and run every peer with mutual TLS")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("certs", help="make a cluster CA (or reuse the one in --out) and a certificate per peer")
    p.add_argument("names", nargs="+", metavar="NAME", help="peer names (each gets NAME.pem and NAME.key)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for ca.pem, ca.key and the peer files")
    p.add_argument("--dns", action="append", default=[], metavar="NAME",
                   help="extra DNS name for every certificate (repeatable)")
    p.add_argument("--ip", action="append", default=[], metavar="ADDR",
                   help="IP address for every certificate (repeatable)")
    p.add_argument("--days", type=int, default=825, help="validity of the peer certificates (default: 825)")
    p.set_defaults(func=cmd_certs)

    _admin_command(sub, "status", "show one peer's status", cmd_status)
    _admin_command(sub, "peers", "list the members one peer knows", cmd_peers)
    _admin_command(sub, "metrics", "print a peer's Prometheus metrics", cmd_metrics)
    _admin_command(sub, "checkpoint", "make a peer write a checkpoint now", cmd_checkpoint)

    p = _admin_command(sub, "pull-model", "download a peer's current model (torch.load-able or safetensors)",
                       cmd_pull_model)
    p.add_argument("-o", "--output", required=True, metavar="PATH",
                   help="file to write the state_dict to (replaced atomically), or an existing directory "
                        "(the file is then named after the peer: <peer_id>.pt or .safetensors)")
    p.add_argument("--format", choices=("torch", "safetensors"), default="torch",
                   help="torch: torch.save of the state_dict; safetensors: the safetensors format (default: torch)")

    _admin_command(sub, "leave", "make a peer leave the swarm gracefully and stop", cmd_leave)

    p = _admin_command(sub, "set", "change a runtime knob: gossip_interval, codec, merge, log_level", cmd_set)
    p.add_argument("assignment", metavar="KEY=VALUE")

    p = _admin_command(sub, "top", "live view of the whole swarm through one peer", cmd_top)
    p.add_argument("--interval", type=seconds, default=1.0,
                   help="seconds between refreshes, and between the two samples of --once (default: 1)")
    p.add_argument("--once", action="store_true",
                   help="print one snapshot (exchange rates from two samples --interval apart) and exit")
    return parser


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """One parser per process: parsing leaves it unchanged, and building it is most of a
    mistyped command's cost (argparse formats every help text as it is added)."""
    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, which knows its options' names
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        # Only the names: a mistyped option's value may be a secret (--mqtt-password=...).
        shown = [a.partition("=")[0] + "=..." if a.startswith("-") and "=" in a else a for a in extra]
        commands[args.command].error(f"unrecognized arguments: {' '.join(shown)}")
    try:
        return args.func(args)
    except (ConfigError, PluginError) as e:
        print(f"hearsay {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        admin_client = sys.modules.get("peer.tools.admin_client")  # loaded if it could have raised
        if admin_client is not None and isinstance(e, admin_client.AdminError):
            print(f"hearsay {args.command}: error: {e}", file=sys.stderr)
            return EXIT_FAILURE
        raise


if __name__ == "__main__":
    sys.exit(main())
