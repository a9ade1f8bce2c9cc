"""What the abuse scripts (abuse_*.py) share: a free loopback port, and a process's resident
memory read from /proc. Python 3 standard library only; Linux."""
import socket


def free_port():
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mem(pid):
    """(VmRSS, VmHWM) of process `pid` in MiB: resident now, and its peak."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) / 1024
    return out["VmRSS"], out["VmHWM"]


def reset_peak(pid):
    """Resets VmHWM to the current resident size (Linux: 5 > clear_refs); False where refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
