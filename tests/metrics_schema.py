"""metrics.json's schema, version 2 (docs/metrics-json.md): what 04, `gemmate evaluate` and the exercises
write through evaluation.metrics_document, checked by tests/test_evaluation.py (on 04's own file after
nbval too) and tests/cli/test_cli_train.py (`gemmate evaluate`'s)."""
import math

from gemmate_lib.evaluation import METRICS, PROPORTIONS, SCHEMA_VERSION


def validate_metrics(doc: dict) -> None:
    """Raise ValueError when `doc` does not follow metrics.json schema version 2."""
    def require(ok, msg: str) -> None:
        if not ok:
            raise ValueError(f"metrics.json: {msg}")

    require(doc.get("schema_version") == SCHEMA_VERSION, f"schema_version must be {SCHEMA_VERSION}")
    for key, kind in (("dataset", str), ("split", str), ("n_examples", int), ("settings", dict),
                      ("models", dict), ("comparisons", dict)):
        require(isinstance(doc.get(key), kind), f"{key} must be a {kind.__name__}")
    share = doc.get("unseen_author_share", "missing")
    require(share is None or (isinstance(share, (int, float)) and 0 <= share <= 1),
            "unseen_author_share must be null or a share in [0, 1]")
    require(doc["n_examples"] >= 1 and doc["models"], "needs at least one example and one model")
    for name, metrics in doc["models"].items():
        require(set(metrics) == set(METRICS), f"model {name!r} must have exactly the metrics {METRICS}")
        for metric, m in metrics.items():
            value, ci, n = m.get("value"), m.get("ci95"), m.get("n")
            interval = "wilson" if metric in PROPORTIONS else "bootstrap"
            require(m.get("interval") == interval, f"{name}.{metric}: interval must be {interval}")
            require(isinstance(n, int) and n >= 0, f"{name}.{metric}: n must be a count")
            if value is None and ci is None and n == 0 and metric == "author_accuracy_seen":
                continue
            require(isinstance(value, (int, float)) and isinstance(ci, list) and len(ci) == 2 and n >= 1,
                    f"{name}.{metric} needs a number `value`, a two-number `ci95` and n >= 1")
            lo_bound, hi_bound = (1.0, math.inf) if metric.startswith("perplexity") else (0.0, 1.0)
            require(lo_bound - 1e-9 <= ci[0] <= value + 1e-9 and value - 1e-9 <= ci[1] <= hi_bound + 1e-9,
                    f"{name}.{metric}: need {lo_bound} <= ci95[0] <= value <= ci95[1] <= {hi_bound}")
    for pair, diffs in doc["comparisons"].items():
        for metric, d in diffs.items():
            require(metric in METRICS, f"comparison {pair!r}: unknown metric {metric!r}")
            ci = d.get("ci95")
            require(isinstance(d.get("difference"), (int, float)) and isinstance(ci, list) and len(ci) == 2
                    and ci[0] <= ci[1] and d.get("method") == "paired bootstrap",
                    f"comparison {pair!r}.{metric} needs a number `difference`, "
                    "an ordered `ci95` and its method")
