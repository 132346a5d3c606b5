"""`corral serve --replicas N`: N `corral serve` processes on this machine, each pinned to its
own cores, and the router in front on --host/--port: one command, one port.

Each replica gets the command's own flags but --host/--port (loopback, a free port) and
--num-threads (its core count), runs in its own process group (Ctrl-C reaches the launcher
only, which stops the replicas in order) and is pinned in the child before exec
(os.sched_setaffinity). On SIGTERM / Ctrl-C the router drains, then each replica gets SIGTERM
(it drains too) and, past a grace period, SIGKILL to its whole group (engine core included).
Should the launcher itself be killed, the kernel sends each replica SIGTERM
(PR_SET_PDEATHSIG), and each engine core exits when its server is gone: no orphans.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

from corral.cluster.supervisor import ReplicaSupervisor

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 900.0
# Flags a replica does not inherit: the launcher's own, and those it sets per replica.
_NOT_INHERITED = frozenset(
    ("replicas", "host", "port", "num_threads", "policy", "poll_interval_s", "health_timeout_s",
     "unhealthy_after", "healthy_after", "max_retries", "router_block_size", "router_num_blocks",
     "max_imbalance", "help", "prefill_replicas", "kv_role", "kv_transfer_port",
     "kv_events_config", "max_replica_restarts", "migration", "rebalance_kv_usage",
     "rebalance_interval_s", "no_precopy")
)  # fmt: skip
_PR_SET_PDEATHSIG = 1


def add_replica_arguments(parser: argparse.ArgumentParser) -> None:
    """`corral serve`'s --replicas and the router's flags that go with it."""
    from corral.cluster.router_cli import add_routing_arguments

    group = parser.add_argument_group("replicas (corral serve --replicas N: N engines + router)")
    group.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="start N corral serve processes, each pinned to its own share of the cores, with "
        "the router in front on --port (default 1: no router)",
    )
    group.add_argument(
        "--max-replica-restarts",
        type=int,
        default=5,
        help="restart a replica that exits while serving (same port and cores, backoff "
        "doubling from 1 s) at most this many times (0: never)",
    )
    group.add_argument(
        "--prefill-replicas",
        type=int,
        default=0,
        help="of the N replicas, run this many with --kv-role prefill and the rest with "
        "--kv-role decode, the router disaggregated in front (docs/disaggregation.md)",
    )
    add_routing_arguments(group)


def replica_kv_events(config_text: str | None, num_replicas: int) -> list[tuple[str, str]]:
    """Per replica: its --kv-events-config (the given one on ports of its own, bound on every
    interface) and the router's --kv-events ENDPOINT[,REPLAY] for it. Empty without events."""
    import dataclasses
    import json

    from corral.config import KVEventsConfig

    if not config_text:
        return []
    config = KVEventsConfig.from_json(config_text)
    if not config.enable_kv_cache_events:
        return []
    result = []
    for _ in range(num_replicas):
        port = _free_port()
        replay_port = _free_port() if config.replay_endpoint else None
        mine = dataclasses.replace(
            config,
            endpoint=f"tcp://*:{port}",
            replay_endpoint=f"tcp://*:{replay_port}" if replay_port else None,
        )
        router_side = f"tcp://127.0.0.1:{port}"
        if replay_port:
            router_side += f",tcp://127.0.0.1:{replay_port}"
        result.append((json.dumps(dataclasses.asdict(mine)), router_side))
    return result


def replica_roles(num_replicas: int, num_prefill: int, migration: bool = False) -> list[str]:
    """Each replica's --kv-role: the first num_prefill prefill, the rest decode ("" for all
    when num_prefill is 0: not disaggregated); with live migration the others lend and fetch
    (both)."""
    other = "both" if migration else "decode"
    if num_prefill == 0:
        return [other if migration else ""] * num_replicas
    if not 0 < num_prefill < num_replicas:
        raise ValueError(
            f"--prefill-replicas {num_prefill} needs at least one decode replica among "
            f"--replicas {num_replicas}"
        )
    return ["prefill"] * num_prefill + [other] * (num_replicas - num_prefill)


def split_cores(cores: Sequence[int], num_replicas: int) -> list[list[int]]:
    """Disjoint contiguous shares of cores, sizes differing by at most one."""
    if num_replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {num_replicas}")
    if num_replicas > len(cores):
        raise ValueError(
            f"--replicas {num_replicas} needs at least {num_replicas} cores; this process may "
            f"use {len(cores)}"
        )
    ordered = sorted(cores)
    size, extra = divmod(len(ordered), num_replicas)
    shares, start = [], 0
    for index in range(num_replicas):
        end = start + size + (1 if index < extra else 0)
        shares.append(ordered[start:end])
        start = end
    return shares


def inherited_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """args as command-line flags of parser, for those that differ from their defaults and a
    replica inherits."""
    flags: list[str] = []
    for action in parser._actions:
        if action.dest in _NOT_INHERITED or not action.option_strings:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            flags.append(flag)
        elif isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*"):
            items = [str(item) for item in value]
            if isinstance(action, argparse._AppendAction):
                for item in items:
                    flags += [flag, item]
            else:
                flags += [flag, *items]
        elif type(action) is argparse._StoreAction and action.nargs is None:
            flags += [flag, str(value)]
        else:
            raise ValueError(f"cannot pass {flag} on to the replicas")
    return flags


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_setup(cores: list[int], parent_pid: int) -> Callable[[], None]:
    # Resolved here, in the parent: the child runs no imports and takes no Python locks (it may
    # be forked from the supervisor's thread while another thread holds one).
    prctl = None
    if sys.platform.startswith("linux"):
        import ctypes

        prctl = ctypes.CDLL(None).prctl

    def setup() -> None:  # runs in the child between fork and exec
        os.setpgid(0, 0)
        os.sched_setaffinity(0, cores)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent_pid:  # the launcher died before prctl
                os.kill(os.getpid(), signal.SIGKILL)

    return setup


class ReplicaProcess:
    """One `corral serve` child on loopback, in its own process group."""

    def __init__(
        self, index: int, flags: list[str], cores: list[int], log_level: str, role: str = ""
    ) -> None:
        self.index = index
        self.role = role  # "prefill" or "decode" when disaggregated
        self.cores = cores
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "corral.cli", "--log-level", log_level, "serve", *flags]
        argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--num-threads", str(len(cores))]
        if role:
            argv += ["--kv-role", role]
        self.argv = argv
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        process = subprocess.Popen(self.argv, preexec_fn=_child_setup(self.cores, os.getpid()))
        logger.info(
            "replica %d: pid %d, port %d, cores %s", self.index, process.pid, self.port, self.cores
        )
        return process

    def restart(self) -> None:
        """Start it again on the same port, cores and flags (whatever is left of the old one,
        its engine core included, is killed first)."""
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self.process = self._spawn()

    def is_healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(self.url + "/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


def wait_healthy(replicas: list[ReplicaProcess], timeout_s: float) -> None:
    """Until every replica answers /health 200; RuntimeError when one exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    waiting = list(replicas)
    while waiting:
        for replica in list(waiting):
            code = replica.process.poll()
            if code is not None:
                raise RuntimeError(f"replica {replica.index} exited ({code}) while starting")
            if replica.is_healthy():
                logger.info("replica %d is up (%s)", replica.index, replica.url)
                waiting.remove(replica)
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"replicas {[r.index for r in waiting]} not healthy in {timeout_s}s")
        if waiting:
            time.sleep(0.25)


def stop_replicas(replicas: list[ReplicaProcess], grace_s: float) -> None:
    """SIGTERM each replica (it drains), SIGKILL each group past grace_s; reaps them all."""
    for replica in replicas:
        if replica.process.poll() is None:
            replica.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for replica in replicas:
        with contextlib.suppress(subprocess.TimeoutExpired):
            replica.process.wait(max(0.1, deadline - time.monotonic()))
    for replica in replicas:  # the group: an engine core that outlived its server too
        replica.signal_group(signal.SIGKILL)
        replica.process.wait()


def _stop_starting(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + sig)


def run_replicas(args: argparse.Namespace) -> int:
    """`corral serve --replicas N`: start, wait, route until stopped, stop everything."""
    from corral.cluster.router_cli import load_tokenizer, router_config_from_args, serve_router
    from corral.config import KVEventsConfig
    from corral.serve.cli import add_arguments as add_serve_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_serve_arguments(parser)
    try:
        shares = split_cores(sorted(os.sched_getaffinity(0)), args.replicas)
        flags = inherited_flags(parser, args)
        roles = replica_roles(
            args.replicas, getattr(args, "prefill_replicas", 0), getattr(args, "migration", False)
        )
        kv_events = replica_kv_events(getattr(args, "kv_events_config", None), args.replicas)
    except ValueError as error:
        print(f"corral serve: {error}", file=sys.stderr)
        return 2
    api_keys = args.api_key or []
    replicas: list[ReplicaProcess] = []
    supervisor: ReplicaSupervisor | None = None
    previous = {sig: signal.signal(sig, _stop_starting) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index, cores in enumerate(shares):
            own = ["--kv-events-config", kv_events[index][0]] if kv_events else []
            replica = ReplicaProcess(index, flags + own, cores, args.log_level, roles[index])
            replicas.append(replica)
        wait_healthy(replicas, STARTUP_TIMEOUT_S)
        overrides: dict[str, object] = {"block_size": args.block_size}
        if args.num_kv_blocks:
            overrides["num_blocks"] = args.num_kv_blocks
        if api_keys:
            overrides["backend_api_key"] = api_keys[0]
        urls = tuple(replica.url for replica in replicas if replica.role != "prefill")
        prefill_urls = tuple(replica.url for replica in replicas if replica.role == "prefill")
        if prefill_urls:
            overrides["prefill_urls"] = prefill_urls
        if kv_events:  # the router subscribes to each replica's stream
            events = {r.url: kv_events[r.index][1] for r in replicas}
            overrides["kv_events"] = tuple(events[url] for url in urls)
            if prefill_urls:
                overrides["prefill_kv_events"] = tuple(events[url] for url in prefill_urls)
            config_json = KVEventsConfig.from_json(args.kv_events_config)
            overrides["kv_events_topic"] = config_json.topic
            overrides["kv_events_hash_format"] = config_json.block_hash_format
        config = router_config_from_args(args, urls, **overrides)
        tokenizer = load_tokenizer(config, args.tokenizer or args.model)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        supervisor = ReplicaSupervisor(replicas, max_restarts=args.max_replica_restarts)
        supervisor.start()
        started = serve_router(
            config,
            tokenizer,
            log_level=args.log_level.lower(),
            access_log=not args.no_access_log,
            drain_timeout_s=args.drain_timeout_s,
        )
        return 0 if started else 1
    except (RuntimeError, ValueError) as error:
        print(f"corral serve: {error}", file=sys.stderr)
        return 1
    finally:

        def force(sig: int, frame: FrameType | None) -> None:  # a second Ctrl-C: no grace
            for replica in replicas:
                replica.signal_group(signal.SIGKILL)

        for sig in previous:
            signal.signal(sig, force)
        if supervisor is not None:
            supervisor.stop()  # no restarts while stopping
        try:
            stop_replicas(replicas, grace_s=args.drain_timeout_s + 10.0)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
