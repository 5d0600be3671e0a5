"""Run an hfedmoe experiment on Flower's Deployment Engine, all on loopback (127.0.0.1):

1. the data owner's step, once: the run's data partitioned into one file per client and one for
   the server (``hfedmoe.federation.node_data``; ``--central-data`` skips it);
2. ``gen-certs.sh``: a private CA + server certificate (TLS) and one ECDSA key pair per SuperNode;
3. a SuperLink (TLS, ``--enable-supernode-auth``, ``--disable-runtime-dependency-installation``,
   ``--database WORK/superlink.db``: registrations and runs survive a SuperLink restart);
4. each SuperNode's public key registered with ``flwr supernode register`` (only those may join);
5. N SuperNodes as separate processes, each with its own ``--node-config`` (``data-path`` = its
   own partition file, the only data it reads; the server assigns clients and device profiles)
   and its private key, retrying a lost SuperLink for ``--max-wait-time`` seconds;
6. the run submitted as users do: ``flwr run app/ <connection>`` with a Flower config file
   (``$FLWR_HOME/config.toml``: address + root certificate) written into the work directory; the
   ServerApp reads only the server's file (``server-data``) and the sizes the nodes report;
7. wait for the run folder to hold the last round's checkpoint, then stop everything started here,
   by process id (terminate, then kill after a bounded wait).

``--kill-node K`` kills SuperNode K (and its ClientApp) while round 1 trains, to show that one lost
client does not stop the run. A SuperLink that exits is restarted on its database (the
SuperNodes reconnect by themselves) and the run resubmitted with ``resume=true``;
``--kill-superlink`` shows it. ``--resume`` redeploys everything (SuperLink, keys, SuperNodes) and
continues the run folder from its last checkpoint: the recovery when this script itself died.
Usage (from the repository root, with the venv's Python)::

    PYTHONPATH=src python examples/flower-deployment/deploy.py --rounds 2 --work /tmp/hfd

``--nodes`` defaults to the config's number of clients (one node per client); fewer (down to
``engine.min_clients``) start a run whose missing clients fail their rounds, after the server has
waited ``engine.connect_timeout_s`` for them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from hfedmoe.config import load_config
from hfedmoe.engines.flower.local_sim import APP_DIR
from hfedmoe.engines.flower.nodes import num_clients
from hfedmoe.engines.flower.processes import free_port, signal_then_kill, stop_processes_naming
from hfedmoe.errors import HFedMoEError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BIN = Path(sys.executable).parent


class Deployment:
    """SuperLink + SuperNodes on loopback; every process it starts is stopped by :meth:`close`."""

    def __init__(self, work: Path, nodes: int, reconnect_s: float = 600.0) -> None:
        self.work = Path(work)
        self.nodes = nodes
        self.reconnect_s = reconnect_s  # how long a SuperNode keeps trying to reach a lost SuperLink
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.certs = self.work / "certs"
        self.database = self.work / "superlink.db"  # the SuperLink's state: survives a SuperLink restart
        self.data: Path | None = None  # the partition files (write_data); None: nodes rebuild the data
        self.submitted: tuple[Path, Path, list[str]] | None = None  # (config, out, overrides) of submit
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.work / "flwr-home"),  # not the user's ~/.flwr
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "OMP_NUM_THREADS": "1",
            "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),  # flower-superexec, flwr-*
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }

    # --- processes -----------------------------------------------------------------------
    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "a")  # noqa: SIM115 (closed with the process; a restart appends)
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.work,
)
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, wait_s: float = 15.0) -> None:
        """Stop process ``name`` and every process it started (flwr starts its app and SuperExec
        processes detached, in sessions of their own), by process id: ``sig``, then SIGKILL."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        try:
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        signal_then_kill(family, sig, wait_s)
        proc.wait(timeout=wait_s)

    def close(self) -> None:
        for name in [n for n in self.procs if n.startswith(("supernode", "serverapp"))] + ["superlink"]:
            self.stop(name)
        # flwr starts app processes detached; one whose parent died early is no longer a child of
        # ours. Ours, and only ours, name this deployment's certificate folder on their command line.
        stop_processes_naming(self.certs)

    def __enter__(self) -> Deployment:
        # SIGTERM (e.g. from `timeout`) unwinds through __exit__, so everything is still stopped
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *args], env=self.env, cwd=self.work, capture_output=True,
                              text=True, timeout=timeout)

    # --- steps ---------------------------------------------------------------------------
    def setup(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        subprocess.run(["bash", str(HERE / "gen-certs.sh"), str(self.certs), str(self.nodes)], check=True,
                       capture_output=True, timeout=120)
        home = self.work / "flwr-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "hfedmoe-local"\n\n[superlink.hfedmoe-local]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.certs / "ca.crt"}"\n')

    def start_superlink(self, timeout_s: float = 60) -> None:
        c = self.certs
        self._start("superlink", [
            str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
            "--ssl-ca-certfile", str(c / "ca.crt"), "--ssl-certfile", str(c / "server.pem"),
            "--ssl-keyfile", str(c / "server.key"), "--enable-supernode-auth",
            "--disable-runtime-dependency-installation", "--database", str(self.database),
        ])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.procs["superlink"].poll() is not None:
                raise RuntimeError(f"superlink exited: see {self.work / 'superlink.log'}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"superlink did not listen on 127.0.0.1:{self.port} within {timeout_s} s")

    def register_supernodes(self) -> list[str]:
        out = []
        for i in range(self.nodes):
            r = self._flwr("supernode", "register", str(self.certs / f"supernode_{i}.pub"), "hfedmoe-local")
            if r.returncode != 0:
                raise RuntimeError(f"flwr supernode register {i} failed: {r.stdout[-800:]} {r.stderr[-800:]}")
            out.append(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "")
        return out

    def write_data(self, config: Path, overrides: list[str]) -> list[Path]:
        """The data owner's step, once: one partition file per client and the server's file (test
        and public splits) in WORK/data. SuperNode i then reads only ``client_i.npz``, the
        ServerApp only ``server.npz`` (and the sizes the nodes report)."""
        from hfedmoe.federation.node_data import write_partitions

        self.data = self.work / "data"
        return write_partitions(load_config(config, overrides), self.data)

    def start_supernodes(self) -> None:
        for i in range(self.nodes):
            node_config = f"partition-id={i} num-partitions={self.nodes}"
            if self.data is not None:
                node_config = f'partition-id={i} data-path="{self.data / f"client_{i}.npz"}"'
            self._start(f"supernode{i}", [
                str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
                "--root-certificates", str(self.certs / "ca.crt"),
                "--auth-supernode-private-key", str(self.certs / f"supernode_{i}"),
                "--node-config", node_config, "--host", "127.0.0.1", "--port", str(free_port()),
                "--max-wait-time", str(self.reconnect_s),  # reconnect by itself after a SuperLink restart
            ])

    def submit(self, config: Path, out: Path, overrides: list[str], resume: bool = False) -> str:
        """``flwr run`` the app; ``resume``: continue the run in ``out`` from its last checkpoint."""
        app = self.work / "app"
        shutil.copytree(APP_DIR, app, dirs_exist_ok=True)
        run_config = f'config="{config}" out="{out}" overrides="{";".join(overrides)}"'
        if self.data is not None:
            run_config += f' server-data="{self.data / "server.npz"}"'
        if resume:
            run_config += " resume=true"
        self.submitted = (config, out, overrides)
        r = self._flwr("run", str(app), "hfedmoe-local", "--run-config", run_config, "--format", "json")
        if r.returncode != 0:
            raise RuntimeError(f"flwr run failed: {r.stdout[-1500:]} {r.stderr[-1500:]}")
        try:
            run_id = str(json.loads(r.stdout)["run-id"])
        except (ValueError, KeyError):
            raise RuntimeError(f"flwr run did not start a run: {r.stdout[-1500:]} {r.stderr[-1500:]}") from None
        # the ServerApp's log, streamed into the work directory (stopped with everything else)
        self.stop("serverapp-log")
        self._start("serverapp-log", [str(BIN / "flwr"), "log", run_id, "hfedmoe-local", "--stream"])
        return r.stdout

    def recover(self) -> None:
        """After the SuperLink died (and the ServerApp with it): a new SuperLink on the same port and
        database (registered keys and nodes kept; the SuperNodes reconnect by themselves), and the
        run submitted again with resume=true: it continues from its last checkpoint."""
        self.start_superlink()
        print("superlink restarted on its database; run resubmitted with resume=true", flush=True)
        if self.submitted is None:
            raise RuntimeError("recover: no run was submitted")
        config, out, overrides = self.submitted
        self.submit(config, out, overrides, resume=True)

    def wait_for(self, out: Path, rounds: int, timeout_s: float, kill_node: int | None = None,
                 kill_superlink: bool = False, restarts: int = 1) -> float:
        """Until ``out`` holds the last round's checkpoint; returns seconds waited. With
        ``kill_node``, that SuperNode is killed (SIGKILL) once round 1 has started; with
        ``kill_superlink``, the SuperLink (and its ServerApp) once round 1 is checkpointed. A
        SuperLink that exits is recovered (:meth:`recover`) at most ``restarts`` times."""
        t0 = time.monotonic()
        killed = kill_node is None
        link_killed = not kill_superlink
        first = out / "checkpoints" / "round_1" / "server_state.json"
        final = out / "checkpoints" / f"round_{rounds}" / "server_state.json"
        while time.monotonic() - t0 < timeout_s:
            if not link_killed and first.is_file():
                self.stop("superlink", sig=signal.SIGKILL)
                link_killed = True
                print("killed the superlink (and its serverapp) after round 1", flush=True)
            if not killed and (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip():
                time.sleep(1.0)  # round-1 models are on their way to the nodes
                self.stop(f"supernode{kill_node}", sig=signal.SIGKILL)
                killed = True
                print(f"killed supernode{kill_node} during round 1", flush=True)
            if final.is_file():
                return time.monotonic() - t0
            if self.procs["superlink"].poll() is not None:
                if restarts <= 0:
                    raise RuntimeError(f"superlink exited: see {self.work / 'superlink.log'}")
                restarts -= 1
                self.recover()
            time.sleep(0.5)
        raise TimeoutError(f"no round-{rounds} checkpoint in {out} after {timeout_s} s; logs in {self.work}")


def check_nodes(config: Path, overrides: list[str], nodes: int | None) -> int:
    """The number of SuperNodes to start: ``nodes``, or one per client of the config; an
    :class:`HFedMoEError` naming ``--nodes`` when it is outside [engine.min_clients, clients]."""
    cfg = load_config(config, overrides)
    n = num_clients(cfg)
    if nodes is None:
        return n
    low = min(cfg.engine.min_clients, n)
    if not low <= nodes <= n:
        raise HFedMoEError(f"--nodes: expected an integer in [{low}, {n}] (the config federates {n} clients, "
                           f"engine.min_clients = {cfg.engine.min_clients}), got {nodes}")
    return nodes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=None, help="SuperNodes to start (default: one per client)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "tiny.toml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key=value, as hfedmoe run --set")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hfedmoe-flower-deployment"))
    ap.add_argument("--kill-node", type=int, default=None, help="SIGKILL this SuperNode during round 1")
    ap.add_argument("--kill-superlink", action="store_true",
                    help="SIGKILL the SuperLink after round 1; it is restarted on its database and the run resumed")
    ap.add_argument("--central-data", action="store_true",
                    help="nodes rebuild the whole data and keep their partition (default: each node reads only "
                         "its own partition file)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--resume", action="store_true",
                    help="continue WORK/run from its last checkpoint (after a SuperLink or ServerApp crash)")
    args = ap.parse_args()
    out = args.work / "run"
    if args.resume and not (out / "checkpoints").is_dir():
        print(f"deploy.py: --resume: expected a run folder with checkpoints in {out}, found none", file=sys.stderr)
        raise SystemExit(2)
    overrides = [*args.overrides, f"federation.rounds={args.rounds}"]
    try:
        nodes = check_nodes(args.config, overrides, args.nodes)
    except HFedMoEError as exc:
        print(f"deploy.py: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for entry in (args.work.iterdir() if args.work.is_dir() else []):  # a fresh deployment; the run
        if entry != out or not args.resume:                                 # folder stays when resuming
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    with Deployment(args.work, nodes) as d:
        d.setup()
        if not args.central_data:
            try:
                d.write_data(args.config, overrides)
            except HFedMoEError as exc:
                print(f"deploy.py: {exc} (or pass --central-data)", file=sys.stderr)
                raise SystemExit(2) from None
            print(f"wrote {nodes} client partition files and the server's file to {d.data}", flush=True)
        d.start_superlink()
        print(f"superlink on 127.0.0.1:{d.port} (TLS, SuperNode authentication, database {d.database})", flush=True)
        d.register_supernodes()
        print(f"registered {nodes} SuperNode public keys", flush=True)
        d.start_supernodes()
        print(d.submit(args.config.resolve(), out, overrides, resume=args.resume).strip(), flush=True)
        waited = d.wait_for(out, args.rounds, args.timeout, args.kill_node, args.kill_superlink)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        print(json.dumps({k: r.get(k) for k in ("round", "test_accuracy", "train_loss", "failed_clients",
                                                "sampled_clients")}))
    print(f"done in {waited:.0f} s; run folder {out}; every process stopped")


if __name__ == "__main__":
    main()
