"""Application builder for `serve deploy deploy/serve.yaml` and KubeRay RayService.

Serve config files name an import path; Serve calls `app_builder(args)` with that
application's `args` mapping:

    args:
      checkpoint: runs/quickstart/final      # HF directory written by training
      serve: {engine: vllm, num_gpus: 1}     # any ServeConfig field (rl_service/config/)

`deploy` is a namespace package on the job's working dir (the repo root), so the import
path is `deploy.serve_app:app_builder`.
"""

from __future__ import annotations

from rl_service.config import ServeConfig


def app_builder(args: dict):
    from rl_service.infra.placement import serve_app

    if "checkpoint" not in args:
        raise ValueError("serve args need `checkpoint`: the HF directory of a trained policy (runs/<name>/final)")
    return serve_app(ServeConfig(**args.get("serve", {})), args["checkpoint"])
