#!/usr/bin/env python3
"""Parse OpenMetrics text from stdin with prometheus_client's strict parser (the reference
implementation's), and print every sample as JSON: [{family, type, name, labels, value}].
A malformed exposition raises, and the exit status is non-zero.
Used by the integration tests (node/tests/common/metrics.rs); scripts/test.sh installs
prometheus-client."""
import json
import math
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        value = s.value if math.isfinite(s.value) else None
        samples.append({"family": family.name, "type": family.type,
                        "name": s.name, "labels": s.labels, "value": value})
json.dump(samples, sys.stdout)
