"""Percentiles for the benchmarks (prints figures, asserts nothing).

    quantiles.py histogram PORT NAME           # a histogram's buckets from the
                                               # controller's /metrics, as JSON
    quantiles.py between BEFORE.json AFTER.json  # p50/p99 of what was observed
                                               # between two such snapshots
    quantiles.py arrivals TASK_LOG START_MS    # p50/p99/last of the tasks a
                                               # fleet-sim --task-log noted
                                               # after START_MS, in ms
"""

import json
import re
import sys
import urllib.request


def histogram(port, name):
    text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % port, timeout=10).read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets[le] = float(line.split()[-1])
    return buckets


def quantile(pairs, q):
    """pairs: (upper bound, cumulative count), ascending; linear inside a bucket."""
    total = pairs[-1][1]
    if total == 0:
        return None
    want = q * total
    low, below = 0.0, 0.0
    for upper, count in pairs:
        if count >= want:
            if upper == float("inf"):
                return low
            inside = count - below
            return low + (upper - low) * ((want - below) / inside if inside else 0)
        low, below = upper, count
    return low


def between(before, after):
    pairs = sorted(
        (float("inf") if le == "+Inf" else float(le), after[le] - before.get(le, 0.0)) for le in after
    )
    n = int(pairs[-1][1]) if pairs else 0
    p50, p99 = quantile(pairs, 0.50), quantile(pairs, 0.99)
    if p50 is None:
        return "nothing observed"
    return "p50 %.1f ms, p99 %.1f ms (%d observed; within histogram buckets)" % (p50 * 1000, p99 * 1000, n)


def arrivals(path, start_ms):
    times = sorted(int(line.split()[0]) - start_ms for line in open(path) if int(line.split()[0]) >= start_ms)
    if not times:
        return "no task arrived"
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    return "%d tasks: p50 %d ms, p99 %d ms, last %d ms after the command" % (
        len(times), pick(0.50), pick(0.99), times[-1])


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "histogram":
        print(json.dumps(histogram(sys.argv[2], sys.argv[3])))
    elif mode == "between":
        print(between(json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))))
    elif mode == "arrivals":
        print(arrivals(sys.argv[2], int(sys.argv[3])))
    else:
        sys.exit(__doc__)
