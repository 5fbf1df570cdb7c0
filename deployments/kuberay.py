"""Keep deploy/kuberay/rayservice.yaml's Serve config generated from serve_config.yaml.

    python -m deployments.kuberay          # rewrite the serveConfigV2 block
    python -m deployments.kuberay --check  # exit 1 when it is stale (tests/test_deploy.py)

serve_config.yaml stays the one source: the RayService carries it verbatim (comments too)
with the few keys a cluster of pods needs otherwise (OVERRIDES), set at the top.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "serve_config.yaml"
RAYSERVICE = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
KEY = "serveConfigV2: |"
# A proxy (HAProxy) on every node, so each worker pod answers HTTP and the pods' Service
# balances over them; on one machine the head's is the only node.
OVERRIDES: dict[str, Any] = {"proxy_location": "EveryNode"}


def serve_config_v2(serve_config: str) -> str:
    lines = serve_config.splitlines()
    for key, value in OVERRIDES.items():
        lines = [
            f"{key}: {value}  # deployments/kuberay.py: for pods" if line.startswith(f"{key}:")
            else line
            for line in lines
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def render(rayservice: str, serve_config: str) -> str:
    """rayservice.yaml with its serveConfigV2 block replaced by serve_config.yaml's text."""
    lines = rayservice.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == KEY)
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    end = start + 1
    while end < len(lines) and (
        not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) >= indent
    ):
        end += 1
    block = [
        (" " * indent + line) if line.strip() else ""
        for line in serve_config_v2(serve_config).splitlines()
    ]
    return "\n".join([*lines[: start + 1], *block, *lines[end:]]) + "\n"


def expected() -> dict[str, Any]:
    """What the RayService's serveConfigV2 must parse to."""
    config: dict[str, Any] = yaml.safe_load(SERVE_CONFIG.read_text())
    return {**config, **OVERRIDES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.kuberay", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only say whether it is stale")
    args = parser.parse_args(argv)
    current = RAYSERVICE.read_text()
    rendered = render(current, SERVE_CONFIG.read_text())
    if rendered == current:
        return 0
    if args.check:
        print(f"{RAYSERVICE} is stale: run python -m deployments.kuberay", file=sys.stderr)
        return 1
    RAYSERVICE.write_text(rendered)
    print(f"wrote {RAYSERVICE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
