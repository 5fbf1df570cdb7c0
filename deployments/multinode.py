"""serve_config.yaml for a cluster of several Ray nodes (machines, or pods).

    python -m deployments.multinode --nodes 2 > serve_config.nodes.yaml
    serve deploy serve_config.nodes.yaml -a http://HEAD:8265

The same applications and settings, with the graph behind the Ingress on every node: one
Preprocess and one Model replica per node (`max_replicas_per_node: 1`), so losing a node
leaves a whole graph on the others, and the Ingress (with the proxy) on the head, which holds
the cluster anyway. The head is the node started with the custom resource HEAD_RESOURCE
(`ray start --head --resources='{"handai_head": 1}'`); `make test-cluster` runs this config.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
HEAD_RESOURCE = "handai_head"
SPREAD = ("Preprocess", "Model")
# A sliver of the head's custom resource: the Ingress may only start there.
ON_HEAD = 0.001


def spread(config: dict[str, Any], nodes: int) -> dict[str, Any]:
    out = copy.deepcopy(config)
    for app in out["applications"]:
        for deployment in app["deployments"]:
            if deployment["name"] in SPREAD:
                deployment["num_replicas"] = nodes
                deployment["max_replicas_per_node"] = 1
            elif deployment["name"] == "Ingress":
                options = deployment.setdefault("ray_actor_options", {})
                options.setdefault("resources", {})[HEAD_RESOURCE] = ON_HEAD
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.multinode", description=__doc__)
    parser.add_argument("--nodes", type=int, default=2, help="Ray nodes that hold replicas")
    parser.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes: expected at least 1")
    loaded = yaml.safe_load(args.config.read_text())
    sys.stdout.write(yaml.safe_dump(spread(loaded, args.nodes), sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
