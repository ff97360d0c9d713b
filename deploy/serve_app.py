"""Application builder for `serve deploy deploy/serve.yaml` and KubeRay RayService.

Serve config files name an import path; Serve calls `app_builder(args)` with that
application's `args` mapping:

    args:
      checkpoint: runs/quickstart/final      # HF directory written by training
      serve: {engine: vllm, num_gpus: 1}     # any ServeConfig field (rl_service/config/)

`deploy` is a namespace package on the job's working dir (the repo root), so the import
path is `deploy.serve_app:app_builder`.

A Serve config deploys behind the cluster's HTTP proxy (`http_options.host: 0.0.0.0` in
deploy/serve.yaml), so it needs an API key: `serve.api_key` in the args or, better, the
RL_SERVICE_API_KEY environment variable of the head (the RayService manifest sets it from a
Kubernetes secret). Without one the application is refused.
"""

from __future__ import annotations

import os

from rl_service.config import ServeConfig


def app_builder(args: dict):
    from rl_service.infra.placement import serve_app

    if "checkpoint" not in args:
        raise ValueError("serve args need `checkpoint`: the HF directory of a trained policy (runs/<name>/final)")
    cfg = ServeConfig(**args.get("serve", {}))
    if cfg.api_key is None and not os.environ.get("RL_SERVICE_API_KEY"):
        raise ValueError(
            "serve args: a cluster deployment is reachable through the proxy on every node and needs "
            "an API key: set RL_SERVICE_API_KEY on the head (e.g. from a Kubernetes secret) or serve.api_key"
        )
    return serve_app(cfg, args["checkpoint"])
