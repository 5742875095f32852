"""Every socket a command's processes listen on, measured with `ss` while it runs (README,
Security). Not a test: it reports what a real run opens.

    .venv/bin/python bench/listeners.py -- .venv/bin/plasticity evolve --preset smoke \\
        --set workers=2 --set generations=400 --no-tracking
    .venv/bin/python bench/listeners.py --seconds 40 -- .venv/bin/plasticity ui --port 5000

The command runs in its own session; every `--every` seconds `ss -H -ltunp` is read and the
listeners of the command's process tree (children of children included) are kept. At the end
(the command exited, or `--seconds` passed: then it gets SIGTERM) one row per (process, protocol,
address) is printed: the address as bound (`*` / `0.0.0.0` = every interface), the ports seen.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

_USER = re.compile(r'\("([^"]+)",pid=(\d+),fd=\d+\)')


def _tree(root: int) -> set[int]:
    """``root`` and all its descendants (from /proc)."""
    children = defaultdict(list)
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(p.name))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo += children.get(pid, [])
    return out


def _cmd(pid: int) -> str:
    try:
        parts = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return " ".join(p.decode(errors="replace") for p in parts if p)[:120]


def _listeners() -> list[tuple[str, str, int, int, str]]:
    """(proto, address, port, pid, process name) of every listening socket of this machine."""
    text = subprocess.run(["ss", "-H", "-ltunp"], capture_output=True, text=True).stdout
    rows = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 6:
            continue
        host, _, port = f[4].rpartition(":")
        for name, pid in _USER.findall(line):
            rows.append((f[0], host, int(port) if port.isdigit() else -1, int(pid), name))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=600, help="stop the command after this long")
    p.add_argument("--every", type=float, default=0.3)
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL)
    seen: dict[tuple, dict] = {}
    t0 = time.time()
    try:
        while proc.poll() is None and time.time() - t0 < args.seconds:
            tree = _tree(proc.pid)
            for proto, host, port, pid, name in _listeners():
                if pid in tree:
                    key = (name, proto, host)
                    row = seen.setdefault(key, {"process": name, "proto": proto, "address": host,
                                                "ports": set(), "cmd": _cmd(pid)})
                    row["ports"].add(port)
            time.sleep(args.every)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    rows = [{**r, "ports": sorted(r["ports"])} for r in seen.values()]
    rows.sort(key=lambda r: (r["address"], r["process"]))
    print(f"# {' '.join(cmd)}  (exit {proc.returncode}, {time.time() - t0:.0f} s)")
    print("| process | proto | address | ports seen | command line |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['process']} | {r['proto']} | {r['address']} | "
              f"{', '.join(map(str, r['ports']))} | `{r['cmd'][:70]}` |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    sys.exit(0)


if __name__ == "__main__":
    main()
