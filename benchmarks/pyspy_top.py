"""Summarise ``py-spy record --native --format raw`` output (issue 19, measure).

Each sample (one line: ``frame;frame;... count``) is charged to:

* ``self``: the deepest *Python* frame (a ``.py`` file, or generated code such as a
  dataclass ``__init__`` from ``<string>``), with whatever native code it calls without
  another Python frame in between (py-spy hides libpython's own frames: C-API time
  called from mypyc code is charged to the mypyc frame);
* ``incl``: every distinct Python function on the stack;
* ``leaf``: the kind of the deepest frame: ``python`` (an interpreted line), ``mypyc``
  (``CPyDef_``/``CPyPy_``/``CPy_`` or a ``__mypyc`` module), ``uvloop`` (``loop.c``,
  ``uv_*``, libuv sources), ``kernel/libc`` (libc, vdso, syscall wrappers),
  ``libpython`` (other native frames of the interpreter).

Samples whose leaf is ``epoll_wait``/``epoll_pwait`` are dropped (the loop asleep)
unless ``--keep-wait``. ``--scale US`` converts shares into µs (e.g. the measured
broker CPU per connection, or per message).

    python benchmarks/pyspy_top.py /tmp/x.pyspy [/tmp/y.pyspy ...] --scale 24.4 --top 15

Not a test.
"""

from __future__ import annotations

import argparse
import collections
import re

FRAME = re.compile(r"^(?P<fn>.*) \((?P<loc>[^()]*)\)$")


def kind(fn: str, loc: str) -> str:
    if loc.endswith(".py") or re.search(r"\.py:\d+$", loc) or loc.startswith("<"):
        return "python"
    if fn.startswith(("CPyDef_", "CPyPy_", "CPy_", "CPyStatic")) or "__mypyc" in loc \
            or "mypyc" in fn:
        return "mypyc"
    if "loop.c" in loc or "handles" in loc or fn.startswith("uv_") or fn.startswith("uv__") \
            or re.search(r"(core|linux|stream|poll|tcp)\.c", loc) or "uvloop" in loc:
        return "uvloop"
    if "libc.so" in loc or "vdso" in loc or fn.startswith("0x") or loc == "?":
        return "kernel/libc"
    return "libpython"


def split(frame: str) -> tuple[str, str]:
    m = FRAME.match(frame.strip())
    return (m.group("fn"), m.group("loc")) if m else (frame, "?")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--scale", type=float, default=0.0, help="µs that 100 %% stands for")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--keep-wait", action="store_true",
                    help="keep samples whose leaf is epoll_wait/epoll_pwait (dropped by "
                         "default: py-spy --native counts the loop's sleep as active)")
    ap.add_argument("--prefix", default="iotbroker/", help="Python files to list")
    args = ap.parse_args()
    self_c: collections.Counter[str] = collections.Counter()
    incl_c: collections.Counter[str] = collections.Counter()
    leaf_c: collections.Counter[str] = collections.Counter()
    self_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    mypyc_c: collections.Counter[str] = collections.Counter()
    total = waits = 0
    for path in args.files:
        with open(path) as f:
            for line in f:
                stack, _, n = line.rstrip("\n").rpartition(" ")
                count = int(n)
                frames = [split(x) for x in stack.split(";")]
                if not args.keep_wait and frames[-1][0].startswith(("epoll_wait", "epoll_pwait")):
                    waits += count
                    continue
                total += count
                leaf_c[kind(*frames[-1])] += count
                py = [(fn, loc.rsplit(":", 1)[0]) for fn, loc in frames
                      if kind(fn, loc) == "python"]
                if py:
                    fn, loc = py[-1]
                    self_c[f"{fn} ({loc})"] += count
                    self_kind[f"{fn} ({loc})"][kind(*frames[-1])] += count
                my = [fn for fn, loc in frames if kind(fn, loc) == "mypyc"
                      and fn.startswith("CPyDef_")]
                if my:
                    mypyc_c[my[-1]] += count
                for fn, loc in dict.fromkeys(py):
                    incl_c[f"{fn} ({loc})"] += count

    def show(c: collections.Counter[str], title: str, filt: bool) -> None:
        print(f"\n{title}")
        shown = 0
        for name, n in c.most_common():
            if filt and args.prefix not in name:
                continue
            us = f"{n / total * args.scale:6.2f} µs" if args.scale else ""
            by = ""
            if name in self_kind and c is self_c:
                k = self_kind[name]
                by = "  [" + ", ".join(f"{x} {v / n * 100:.0f}%" for x, v in k.most_common()) + "]"
            print(f"  {n / total * 100:5.1f} %  {us}  {name}{by}")
            shown += 1
            if shown >= args.top:
                break

    print(f"samples: {total} (files: {len(args.files)}; epoll_wait leaf dropped: {waits})")
    show(leaf_c, "leaf frame kind (where the CPU was when sampled)", False)
    show(self_c, "self: deepest Python frame (our functions, incl. the C they call)", True)
    user_c: collections.Counter[str] = collections.Counter(
        {k: n - self_kind[k]["kernel/libc"] for k, n in self_c.items()})
    show(user_c, "self outside the kernel/libc (interpreted + libpython + mypyc + uvloop)", True)
    show(incl_c, "inclusive: Python function on the stack", True)
    show(mypyc_c, "deepest compiled (mypyc CPyDef_) function on the stack", False)


if __name__ == "__main__":
    main()
