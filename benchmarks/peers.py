"""kstore against the stores a user would pick instead, on one disk, in one run.

    python benchmarks/peers.py --records 1000000 --runs 5 --plot peers.png [--json]

A thin script over ``kstore.peers`` (the same code as ``kstore bench --compare``); see that
module for the workload and the peers. Peers are optional: ``pip install 'kstore[bench]'``.
Data files go to a temporary folder in the current directory (the same disk), deleted after.
"""

from __future__ import annotations

import argparse
import json
import sys

from kstore.peers import PEERS, markdown, plot, run, table

__all__ = ["PEERS", "main", "markdown", "plot", "run", "table"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--peers", default=None,
                    help=f"comma-separated subset of: {', '.join(PEERS)} (kstore always runs)")
    ap.add_argument("--plot", default=None, metavar="FILE", help="write a PNG plot here")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    ap.add_argument("--dir", default=".", help="where the temporary data folder goes")
    a = ap.parse_args(argv)
    peers = a.peers.split(",") if a.peers else None
    say = (lambda m: print(m, file=sys.stderr)) if a.json else print
    report = run(a.records, a.runs, a.value_size, peers, a.dir, log=say)
    if a.plot:
        plot(report, a.plot)
        say(f"plot written to {a.plot}")
    if a.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        from rich.console import Console
        Console().print(table(report))
        if a.markdown:
            print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
