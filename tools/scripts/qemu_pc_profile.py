#!/usr/bin/env python3
"""A sampling profile of the Cortex-M4 or Cortex-M55 (--m55) firmware under QEMU, by function.

    python3 tools/scripts/qemu_pc_profile.py [--m55] ELF [TOP]

Runs ELF on `qemu-system-arm -machine mps2-an386 -icount shift=0` (mps3-an547 with --m55: the
firmware built with `--target thumbv8m.main-none-eabihf`) with a monitor socket, reads the
program counter (`info registers`, R15) every ~3 ms of wall time until the firmware exits, and maps
each sample to the enclosing function symbol (`llvm-nm -n` from rustup's llvm-tools component).
Wall-time sampling under -icount approximates instruction shares; with LTO most kernels are inlined
into their callers, so the names are the callers'. The firmware's own output goes to
/tmp/qemu_pc_profile.out. Build the ELF with line tables for nicer names:
`CARGO_PROFILE_RELEASE_DEBUG=1 cargo build --release --bin srdd-firmware` in firmware/.
"""
import bisect
import collections
import glob
import os
import re
import socket
import subprocess
import sys
import time

args = sys.argv[1:]
m55 = "--m55" in args
args = [a for a in args if a != "--m55"]
cpu, machine = ("cortex-m55", "mps3-an547") if m55 else ("cortex-m4", "mps2-an386")
elf = args[0]
top = int(args[1]) if len(args) > 1 else 25
nm = sorted(glob.glob(os.path.expanduser("~/.rustup/toolchains/*/lib/rustlib/*/bin/llvm-nm")))
if not nm:
    sys.exit("llvm-nm not found: rustup component add llvm-tools")
sock = f"/tmp/qemu_pc_profile.{os.getpid()}.sock"
qemu = subprocess.Popen(
    ["qemu-system-arm", "-cpu", cpu, "-machine", machine, "-nographic",
     "-semihosting-config", "enable=on,target=native", "-icount", "shift=0", "-kernel", elf,
     "-monitor", f"unix:{sock},server,nowait", "-serial", "null"],
    stdout=open("/tmp/qemu_pc_profile.out", "w"), stderr=subprocess.STDOUT)
while not os.path.exists(sock):
    time.sleep(0.01)
mon = socket.socket(socket.AF_UNIX)
mon.connect(sock)
mon.settimeout(2)


def pc():
    try:
        mon.sendall(b"info registers\n")
        data = b""
        while b"R15=" not in data or b"(qemu)" not in data.split(b"R15=")[-1]:
            chunk = mon.recv(65536)
            if not chunk:
                return None
            data += chunk
    except (socket.timeout, ConnectionResetError, BrokenPipeError):
        return None
    found = re.findall(rb"R15=([0-9a-f]{8})", data)
    return int(found[-1], 16) if found else None


samples = []
while qemu.poll() is None:
    p = pc()
    if p is not None:
        samples.append(p)
    time.sleep(0.003)
os.path.exists(sock) and os.remove(sock)
syms = []
for line in subprocess.run([nm[-1], "-n", "-C", "--defined-only", elf],
                           capture_output=True, text=True, check=True).stdout.splitlines():
    parts = line.split(" ", 2)
    if len(parts) == 3 and parts[1] in "tTwW":
        syms.append((int(parts[0], 16) & ~1, parts[2]))
syms.sort()
addrs = [a for a, _ in syms]
counts = collections.Counter()
for p in samples:
    i = bisect.bisect_right(addrs, p) - 1
    counts[syms[i][1] if i >= 0 else "?"] += 1
print(f"{len(samples)} samples of {elf}")
for name, n in counts.most_common(top):
    print(f"{100 * n / max(len(samples), 1):5.1f}%  {name[:140]}")
