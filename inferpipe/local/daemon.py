"""The local stack as a background process: ``inferpipe local up | status | down``.

``up`` spawns ``python -m inferpipe.local.daemon serve --port P`` in its own session (log:
``<state_dir>/local.log``), waits until the stack answers with its resources provisioned, and
records ``<state_dir>/local.json`` = {pid, port, endpoint_url, started, log}. Running ``up``
again reports the running stack; a state file whose process is gone (or is not ours) is stale
and is replaced. ``down`` sends SIGTERM (SIGKILL after a timeout) and removes the state file.
The stack listens on 127.0.0.1 only.

Example::

    info = up(port=4599, state_dir=Path(".inferpipe"))     # {"pid", "port", "endpoint_url", ...}
    status(Path(".inferpipe"))["running"]                  # True
    endpoint = ensure_running(Path(".inferpipe"))          # what `inferpipe classify` calls
    down(Path(".inferpipe"))                               # True: it was running and is stopped
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inferpipe.local.persistence import SNAPSHOT_FILE
from inferpipe.paths import REPO_ROOT
from inferpipe.stack.resources import render_resources

DEFAULT_PORT = 4599
PORT_ENV = "INFERPIPE_LOCAL_PORT"
STATE_FILE = "local.json"
LOG_FILE = "local.log"
#: The running stack's control token (inferpipe.local.guard.ControlGuard), readable by its user only.
TOKEN_FILE = "control-token"
TOKEN_ENV = "INFERPIPE_LOCAL_TOKEN"
LOCK_FILE = "local.lock"
_MODULE = "inferpipe.local.daemon"


def default_port() -> int:
    """The port from INFERPIPE_LOCAL_PORT, else 4599."""
    return int(os.environ.get(PORT_ENV) or DEFAULT_PORT)


def default_state_dir() -> Path:
    from inferpipe.paths import STATE_DIR

    return STATE_DIR


class DaemonError(RuntimeError):
    """The local stack could not be started or stopped; the message says why (and where the log is)."""


# -- process helpers ---------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone; our own exited child is reaped)."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fine
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_daemon(pid: int) -> bool:
    """Whether ``pid`` is a local-stack server (guards against a reused pid). Unknown -> True."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return _MODULE.encode() in cmdline and b"serve" in cmdline


def _answers(endpoint_url: str, timeout: float = 2.0) -> bool:
    """True when the stack at ``endpoint_url`` answers with its state machine provisioned."""
    import boto3
    from botocore.config import Config

    resources = render_resources()
    client = boto3.session.Session().client(
        "stepfunctions",
        endpoint_url=endpoint_url,
        region_name=resources.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(
            connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 0, "total_max_attempts": 1}
        ),
    )
    try:
        client.describe_state_machine(stateMachineArn=resources.state_machine_arn)
        return True
    except Exception:  # noqa: BLE001  (refused, timed out, or not our stack: any failure means "does not answer")
        return False
    finally:
        client.close()


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("pid"), int) else None


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    path = state_dir / STATE_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2), encoding="utf-8")
    temporary.replace(path)


def _remove_state(state_dir: Path) -> None:
    for name in (STATE_FILE, TOKEN_FILE):
        with contextlib.suppress(FileNotFoundError):
            (state_dir / name).unlink()


def _new_token(state_dir: Path) -> str:
    """A fresh control token, written 0600 (created so: never readable by others, not even briefly)."""
    token = secrets.token_urlsafe(32)
    path = state_dir / TOKEN_FILE
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token)
    return token


def control_token(state_dir: Path | None = None) -> str | None:
    """The running stack's control token: ``INFERPIPE_LOCAL_TOKEN``, else its state folder's file."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    try:
        return (Path(state_dir or default_state_dir()) / TOKEN_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One up/down at a time per state directory."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / LOCK_FILE, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL when still running after ``timeout`` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)
    if _alive(pid):
        raise DaemonError(f"process {pid} survived SIGKILL")


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- public API --------------------------------------------------------------------------------


def status(state_dir: Path | None = None) -> dict[str, Any]:
    """``{"running", "pid", "port", "endpoint_url", "started", "log", "resources", ...}``.

    Running means: the recorded process is alive, is a local-stack server, and its endpoint answers.
    """
    state_dir = Path(state_dir or default_state_dir())
    state = _read_state(state_dir)
    resources = render_resources()
    report: dict[str, Any] = {
        "running": False,
        "state_file": str(state_dir / STATE_FILE),
        "log": str(state_dir / LOG_FILE),
    }
    if state is None:
        report["problem"] = f"no local stack runs from {state_dir}"
        report["fix"] = "inferpipe local up"
        return report
    report.update(state)
    pid = int(state["pid"])
    alive = _alive(pid) and _is_daemon(pid)
    report["running"] = alive and _answers(str(state.get("endpoint_url", "")))
    if not report["running"]:
        report["stale"] = True
        report["problem"] = (
            f"the local stack started {state.get('started')} (pid {pid}, {state.get('endpoint_url')}) "
            + ("runs but does not answer: hung or still starting" if alive else "is gone: it exited or was killed")
        )
        report["last_log_lines"] = _log_tail(state_dir / LOG_FILE, lines=5).splitlines()
        report["fix"] = ("inferpipe local down && inferpipe local up" if alive else "inferpipe local up") + (
            f"  (it comes back with the state kept in {state_dir}, at most a few seconds older than the crash)"
        )
        return report
    report["resources"] = {
        "buckets": dict(resources.buckets),
        "table": resources.table,
        "topic": resources.topic_arn,
        "queue": resources.queue,
        "event_bus": resources.event_bus,
        "state_machine": resources.state_machine_arn,
        "trigger_rule": resources.trigger_rule,
        "functions": {key: spec.name for key, spec in resources.functions.items()},
        "log_groups": {key: f"/aws/lambda/{spec.name}" for key, spec in resources.functions.items()},
    }
    buffer = resources.trigger_buffer
    mode = str(state.get("trigger") or buffer.default_mode)
    report["trigger"] = {
        "mode": mode,
        "rule": resources.trigger_rule,
        **(
            {
                "buffer_queue": buffer.queue,
                "pipe": buffer.pipe,
                "batch_size": buffer.batch_size,
                "batching_window_s": buffer.batching_window_s,
            }
            if mode == "batched"
            else {"target": resources.state_machine_arn}
        ),
    }
    report["lambda"] = {
        "mode": "isolated",  # execution environments: one awslambdaric worker process each
        "max_environments": dict(resources.local_lambda.max_environments),
        "idle_environment_seconds": resources.local_lambda.idle_environment_seconds,
    }
    return report


def up(
    port: int | None = None,
    state_dir: Path | None = None,
    timeout: float = 120.0,
    trigger: str | None = None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Start the local stack in the background (or report the running one). Returns its status.

    The stack keeps its state in ``state_dir`` (:mod:`inferpipe.local.persistence`) and comes back
    with it; ``fresh`` starts it empty (the snapshot is deleted; refused while a stack runs).

    ``trigger``: "batched" or "direct" (None: stack.json's default, or whatever the running stack
    uses). Asking a running stack for another trigger is an error, not silently ignored."""
    state_dir = Path(state_dir or default_state_dir())
    asked_port, port = port, default_port() if port is None else port
    with _locked(state_dir):
        current = status(state_dir)
        if current["running"]:
            _check_running_matches(current, state_dir, asked_port, trigger, fresh)
            return {**current, "already_running": True}
        _clear_leftovers(state_dir, port, fresh)
        log_path = state_dir / LOG_FILE
        process = _spawn(state_dir, port, trigger, log_path)
        endpoint_url = f"http://127.0.0.1:{port}"
        _wait_until_answering(process, endpoint_url, log_path, timeout)
        state = {
            "pid": process.pid,
            "port": port,
            "endpoint_url": endpoint_url,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "log": str(log_path),
            "trigger": trigger or render_resources().trigger_buffer.default_mode,
        }
        _write_state(state_dir, state)
        process.returncode = 0  # detached on purpose: do not warn that it "is still running"
        return status(state_dir)


def _check_running_matches(
    current: dict[str, Any], state_dir: Path, asked_port: int | None, trigger: str | None, fresh: bool
) -> None:
    """Refuse what the running stack cannot give: a fresh start, another port, another trigger."""
    if fresh:
        raise DaemonError(
            f"the local stack at {current['endpoint_url']} is running: `inferpipe local down` first, "
            "then `inferpipe local up --fresh`"
        )
    if asked_port is not None and int(current["port"]) != asked_port:
        raise DaemonError(
            f"the local stack already runs at {current['endpoint_url']}, not on port {asked_port}; run "
            f"`inferpipe local down` first to move it (one stack per state folder, {state_dir})"
        )
    running_trigger = current["trigger"]["mode"]
    if trigger is not None and trigger != running_trigger:
        raise DaemonError(
            f"the local stack at {current['endpoint_url']} runs the {running_trigger} trigger; "
            f"run `inferpipe local down` first to start it with --trigger {trigger}"
        )


def _clear_leftovers(state_dir: Path, port: int, fresh: bool) -> None:
    """End a stale daemon of ours, forget its state (and the snapshot, when ``fresh``), free the port."""
    from inferpipe.local.stack import _port_free

    stale = _read_state(state_dir)
    if stale and _alive(stale["pid"]) and _is_daemon(stale["pid"]):
        _terminate(stale["pid"], timeout=10.0)  # ours but not answering: hung or half started
    _remove_state(state_dir)
    if fresh:
        (state_dir / SNAPSHOT_FILE).unlink(missing_ok=True)
    # after a crash, the dead stack's port can take a moment to be free (its sockets closing)
    deadline = time.monotonic() + (10.0 if stale else 0.0)
    while not _port_free(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not _port_free(port):
        raise DaemonError(f"port {port} on 127.0.0.1 is in use by another program (set {PORT_ENV} or --port)")


def _spawn(state_dir: Path, port: int, trigger: str | None, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m inferpipe.local.daemon serve`` detached, its output appended to ``log_path``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env[TOKEN_ENV] = _new_token(state_dir)  # the server reads it once, at start
    with open(log_path, "ab") as log:
        log.write(f"--- {datetime.now(UTC).isoformat()} starting on port {port}\n".encode())
        log.flush()
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                _MODULE,
                "serve",
                "--port",
                str(port),
                "--state-dir",
                str(state_dir),
                *(["--trigger", trigger] if trigger else []),
            ],
            cwd=str(REPO_ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def _wait_until_answering(process: subprocess.Popen[bytes], endpoint_url: str, log_path: Path, timeout: float) -> None:
    """Wait for the new stack to answer; on failure (or interruption) it is terminated."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise DaemonError(
                    f"the local stack exited with status {process.returncode} while starting; "
                    f"log {log_path}:\n{_log_tail(log_path)}"
                )
            if _answers(endpoint_url, timeout=1.0):
                return
            if time.monotonic() > deadline:
                raise DaemonError(f"the local stack did not answer within {timeout:.0f} s; log {log_path}")
            time.sleep(0.2)
    except BaseException:
        _terminate(process.pid, timeout=5.0)
        raise


def down(state_dir: Path | None = None, timeout: float = 15.0) -> bool:
    """Stop the background stack; True if one was running. Removes the state file either way."""
    state_dir = Path(state_dir or default_state_dir())
    with _locked(state_dir):
        state = _read_state(state_dir)
        if state is None:
            _remove_state(state_dir)  # unreadable leftovers
            return False
        pid = int(state["pid"])
        was_running = _alive(pid) and _is_daemon(pid)
        if was_running:
            _terminate(pid, timeout)
        _remove_state(state_dir)
        return was_running


def ensure_running(state_dir: Path | None = None, port: int | None = None) -> str:
    """The endpoint URL of the running local stack, starting it when needed."""
    current = status(state_dir)
    if current["running"]:
        return str(current["endpoint_url"])
    return str(up(port=port, state_dir=state_dir)["endpoint_url"])


# -- the server process ------------------------------------------------------------------------


def serve(port: int, trigger: str | None = None, state_dir: Path | None = None) -> int:
    """Run the local stack in the foreground until SIGTERM or SIGINT; exit status 0 on a clean stop."""
    from inferpipe.local.stack import LocalStack

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request is noise here
    stopping = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        logging.getLogger(_MODULE).info("signal %s: stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    stack = LocalStack(trigger=trigger, control_token=os.environ.pop(TOKEN_ENV, None), state_dir=state_dir)
    try:
        stack.start(port)
        logging.getLogger(_MODULE).info("ready at %s (pid %d)", stack.endpoint_url, os.getpid())
        while not stopping.wait(0.5):
            pass
    finally:
        stack.stop()
        logging.getLogger(_MODULE).info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}", description="the inferpipe local stack")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run in the foreground (what `up` spawns)")
    serve_parser.add_argument("--port", type=int, default=default_port())
    serve_parser.add_argument("--trigger", choices=render_resources().trigger_buffer.modes, default=None)
    serve_parser.add_argument(
        "--state-dir", type=Path, default=None, help="keep the stack's state here (snapshot.pickle)"
    )
    for name in ("up", "down", "status"):
        command = commands.add_parser(name)
        command.add_argument("--state-dir", type=Path, default=None)
        if name == "up":
            command.add_argument("--port", type=int, default=default_port())
            command.add_argument("--trigger", choices=render_resources().trigger_buffer.modes, default=None)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.port, args.trigger, args.state_dir)
    if args.command == "up":
        print(json.dumps(up(args.port, args.state_dir, trigger=args.trigger), indent=2))
        return 0
    if args.command == "down":
        print("stopped" if down(args.state_dir) else "not running")
        return 0
    report = status(args.state_dir)
    print(json.dumps(report, indent=2))
    return 0 if report["running"] else 3


if __name__ == "__main__":
    sys.exit(main())
