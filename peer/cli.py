"""`hearsay` command line: run | cluster | status | peers.

Every failure the user can cause (bad option, unreachable peer, bad plug-in) ends
with one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from google.protobuf.json_format import MessageToDict

from peer import __version__
from peer.config import ConfigError, add_flags, load, merge_rules
from peer.plugins import PluginError

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _status_lines(s) -> list[str]:  # noqa: ANN001 - admin_pb2.StatusResponse
    acc = f"{s.accuracy:.4f}" if s.accuracy >= 0 else "not evaluated yet"
    return [
        f"peer          {s.peer_id}",
        f"address       {s.gossip_address}",
        f"model         {s.model} on {s.dataset} ({s.samples} samples, {s.device})",
        f"steps         {s.steps}{' (training done)' if s.training_done else ''}",
        f"accuracy      {acc}",
        f"loss          {s.loss:.4f}",
        f"known peers   {s.known_peers}",
        f"exchanges     {s.exchanges} ({s.merges} merged, {s.rejected} refused)",
        f"bytes in/out  {s.bytes_received} / {s.bytes_sent}",
        f"model         version {s.model_version}, digest {s.model_digest[:16]}",
        f"uptime        {s.uptime_seconds:.1f} s",
    ]


def cmd_run(args: argparse.Namespace) -> int:
    from peer import logs
    from peer.node import run

    config = load(args)
    if args.check_config:
        import dataclasses

        shown = {k: ("***" if k == "admin_token" and v else v) for k, v in dataclasses.asdict(config).items()}
        print(json.dumps({"ok": True, "config": shown}))
        return 0
    logs.setup(config.log_level, config.log_json, config.resolved_peer_id())
    return run(config)


def _client(args: argparse.Namespace):  # noqa: ANN202 - AdminClient, imported lazily
    from peer.admin_client import AdminClient, resolve_token

    return AdminClient(args.admin, args.timeout, token=resolve_token(args.token, args.token_file))


def _as_dict(message) -> dict:  # noqa: ANN001 - a protobuf message
    return MessageToDict(message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        s = client.status()
    print(json.dumps(_as_dict(s)) if args.json else "\n".join(_status_lines(s)))
    return 0


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
    with _client(args) as client:
        c = client.save_checkpoint()
    print(json.dumps(_as_dict(c)) if args.json else
          f"checkpoint {c.path} (step {c.step}, {c.size_bytes} bytes, sha256 {c.sha256[:16]})")
    return 0


def cmd_pull_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    with _client(args) as client:
        data = client.download_model()
    out = Path(args.output)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(out)  # never leave a half-written model under the requested name
    if args.json:
        print(json.dumps({"path": str(out), "bytes": len(data)}))
    else:
        print(f"wrote {len(data)} bytes to {out} (load with torch.load(path, weights_only=True))")
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    with _client(args) as client:
        r = client.leave()
    print(json.dumps(_as_dict(r)) if args.json else
          f"leaving: draining {r.in_flight} exchange(s) in flight, then stopping")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    key, sep, value = args.assignment.partition("=")
    if not sep or not key:
        print(f"hearsay set: error: expected KEY=VALUE, got {args.assignment!r}", file=sys.stderr)
        return EXIT_USAGE
    with _client(args) as client:
        r = client.set(key.strip(), value.strip())
    print(json.dumps(_as_dict(r)) if args.json else f"{r.key} = {r.value} (was {r.previous})")
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console
    from rich.live import Live

    from peer.top import poll, render

    previous: dict[str, tuple[int, float]] = {}
    with _client(args) as client:
        if args.once or args.json:
            rows = poll(client, previous)
            if args.json:
                print(json.dumps([r.as_dict() for r in rows]))
            else:
                Console(width=None if sys.stdout.isatty() else 140).print(render(rows, args.admin))
            return 0
        with Live(render(poll(client, previous), args.admin), auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)
                live.update(render(poll(client, previous), args.admin), refresh=True)


def cmd_cluster(args: argparse.Namespace) -> int:
    from peer.certs import CertError
    from peer.cluster import ClusterSpec, check_spec, preflight, run_cluster

    spec = ClusterSpec(peers=args.n, duration=args.duration, target_accuracy=args.target_accuracy,
                       out=args.out, model=args.model, partition=args.partition, alpha=args.alpha,
                       merge=args.merge, gossip_interval=args.gossip_interval, seed=args.seed,
                       extra_args=args.peer_arg or [], tls=args.tls, dataset=args.dataset,
                       data_path=args.data_path, dataset_args=args.dataset_arg or [], shard_count=args.shard_count,
                       eval_samples=args.eval_samples, eval_every=args.eval_every, eval_budget=args.eval_budget,
                       final_eval=args.final_eval)
    try:
        check_spec(spec)
        preflight(spec)  # a bad data set or model is one line here, not N peers dying at start-up
        return run_cluster(spec)
    except (ValueError, CertError) as e:  # PluginError and ConfigError are ValueErrors too
        print(f"hearsay cluster: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def cmd_certs(args: argparse.Namespace) -> int:
    from peer.certs import CertError, make_certs

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
    p.add_argument("--admin", default="127.0.0.1:7071", metavar="HOST:PORT",
                   help="admin address of the peer to ask (default: 127.0.0.1:7071)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default: 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--token", default=None, help="admin bearer token (default: $HEARSAY_ADMIN_TOKEN)")
    p.add_argument("--token-file", default=None, metavar="FILE", help="file holding the admin bearer token")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hearsay", description="Gossip-learning peer daemon.")
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
    p.add_argument("--merge", default="vc", choices=merge_rules())
    p.add_argument("--gossip-interval", type=float, default=1.0)
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

    p = sub.add_parser("status", help="show one peer's status")
    _add_admin_flags(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("peers", help="list the members one peer knows")
    _add_admin_flags(p)
    p.set_defaults(func=cmd_peers)

    p = sub.add_parser("metrics", help="print a peer's Prometheus metrics")
    _add_admin_flags(p)
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("checkpoint", help="make a peer write a checkpoint now")
    _add_admin_flags(p)
    p.set_defaults(func=cmd_checkpoint)

    p = sub.add_parser("pull-model", help="download a peer's current model (torch.load-able)")
    _add_admin_flags(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the state_dict")
    p.set_defaults(func=cmd_pull_model)

    p = sub.add_parser("leave", help="make a peer leave the swarm gracefully and stop")
    _add_admin_flags(p)
    p.set_defaults(func=cmd_leave)

    p = sub.add_parser("set", help="change a runtime knob: gossip_interval, codec, merge, log_level")
    _add_admin_flags(p)
    p.add_argument("assignment", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_set)

    p = sub.add_parser("top", help="live view of the whole swarm through one peer")
    _add_admin_flags(p)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default: 1)")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.set_defaults(func=cmd_top)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from peer.admin_client import AdminError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, PluginError) as e:
        print(f"hearsay {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except AdminError as e:
        print(f"hearsay {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
