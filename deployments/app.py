"""The Serve graph, bound once: Ingress -> Preprocess -> Model. Rolled out by serve_config.yaml."""

from deployments.ingress import Ingress
from deployments.model import Model
from deployments.preprocess import Preprocess

# Serve's decorator adds bind(); mypy sees the undecorated classes.
app = Ingress.bind(Preprocess.bind(), Model.bind())  # type: ignore[attr-defined]
