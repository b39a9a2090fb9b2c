"""Run a command; print its output with ``peak_rss_mb`` (the child's peak resident memory) added
to its last line, which must be a JSON object. usage: python peak_rss.py COMMAND ARGS..."""

import json
import resource
import subprocess
import sys

result = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True, check=True)
lines = result.stdout.strip().splitlines()
record = json.loads(lines[-1])
record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
print("\n".join(lines[:-1] + [json.dumps(record)]))
