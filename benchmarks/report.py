"""Print medians and ratios per group from a pytest-benchmark JSON file.

    python benchmarks/report.py RESULTS.json

Within a group, each line shows the median, the throughput where the test's ``extra_info`` or
name gives a count (with its min-max over the rounds), and the ratio of the baseline's median
to this one (``x faster``); when the two moved different counts (``records``, else ``bytes``)
the ratio is of their throughputs instead. Baselines are the tests whose name contains
``baseline``. ``load_1m`` in ``extra_info`` (the load average around the test) is shown too.
"""

import json
import sys
from collections import defaultdict


def _rate(b, per):
    """(median, min, max) of extra_info[per] / seconds, or None."""
    extra = b.get("extra_info") or {}
    if per not in extra:
        return None
    st = b["stats"]
    return extra[per] / st["median"], extra[per] / st["max"], extra[per] / st["min"]


def ratio(base, b):
    """How many times faster b is than base: the throughput ratio when both give a count of
    the same kind (records first), else the ratio of the medians."""
    for per in ("records", "bytes"):
        rb, rbase = _rate(b, per), _rate(base, per)
        if rb and rbase:
            return rb[0] / rbase[0]
    return base["stats"]["median"] / b["stats"]["median"]


def main(path):
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b["group"]].append(b)
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
          f"{data['machine_info'].get('python_version')}")
    if any((b.get("options") or {}).get("disable_gc") for b in data["benchmarks"]):
        print("garbage collector: off inside the timed calls (--benchmark-disable-gc)")
    for group, items in groups.items():
        print(f"\n## {group}")
        bases = [b for b in items if "baseline" in b["name"]]
        for b in sorted(items, key=lambda b: b["stats"]["median"]):
            med = b["stats"]["median"]
            line = f"  {b['name']:<60} median {med * 1e3:9.3f} ms"
            extra = b.get("extra_info") or {}
            spread = b["stats"]["rounds"] > 1
            if "records" in extra:
                r = _rate(b, "records")
                line += f"  {r[0] / 1e6:7.2f} M rec/s"
                if spread:
                    line += f" ({r[1] / 1e6:.2f}-{r[2] / 1e6:.2f})"
            if "bytes" in extra:
                r = _rate(b, "bytes")
                line += f"  {r[0] / 1e6:8.1f} MB/s"
                if spread and "records" not in extra:
                    line += f" ({r[1] / 1e6:.0f}-{r[2] / 1e6:.0f})"
            for k in ("p50_us", "p99_us", "max_us"):
                if k in extra:
                    line += f"  {k[:-3]} {extra[k]:.0f} us"
            for base in bases:
                if base is not b:
                    line += f"  {ratio(base, b):6.2f}x vs {base['name'].split('baseline_')[-1]}"
            if "load_1m" in extra:
                line += f"  load {extra['load_1m']}"
            print(line)


if __name__ == "__main__":
    main(sys.argv[1])
