"""Helpers of the tests that start real processes on 127.0.0.1 (the Scaling
out page's recipes): free ports, and processes run together with a bound on
their time."""

import socket
import subprocess


def free_ports(n=1):
    """`n` distinct free TCP ports on 127.0.0.1."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_together(commands, timeout, cwd=None):
    """Start one process for each `(args, env)` of `commands`, all at once,
    and wait for them, `timeout` seconds at most: a process still running
    then is killed (and `communicate` raises `TimeoutExpired`).

    Returns `(processes, outputs)`: their stdout and stderr together, as text.
    """
    procs = [
        subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for args, env in commands
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return procs, outputs
