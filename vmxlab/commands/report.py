"""``vmxlab report TRACE --html OUT.html``: one self-contained HTML page from a JSON Lines trace (`vmxlab run
--trace FILE`): the two-axis timeline -- instructions across, the four rings drawn separately for VMX root (the
Python VMM), VMX non-root (the guest) and no VMX -- with VM exits and exceptions marked and clickable, and
exit statistics by reason.  No server, no network: open it from disk."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="an HTML page with the ring x VMX-mode timeline of a trace",
                       description=__doc__)
    p.add_argument("trace", type=Path, help="a JSON Lines trace (vmxlab run ... --trace FILE)")
    p.add_argument("--html", type=Path, required=True, metavar="OUT.html", help="where to write the page")
    p.add_argument("--title", help="page title (default: the trace's file name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..trace.report import load_trace, write_html

    events = load_trace(args.trace)
    stats = write_html(events, args.html, title=args.title or args.trace.name)
    print(f"vmxlab: wrote {args.html} ({stats['events']} events, {stats['exits']} VM exits, "
          f"{stats['exceptions']} exceptions)")
    return 0
